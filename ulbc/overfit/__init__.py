"""Shared parts of the overfitted (per-item optimised) codecs: LotteryCodec and the Cool-chic-style baseline."""
