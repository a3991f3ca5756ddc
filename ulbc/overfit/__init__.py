"""Shared parts of the overfitted (per-item optimised) codecs: LotteryCodec and the Cool-chic-style baseline."""

#: Environment variable that picks the overfitted codecs' decoder: ``compiled`` (the default,
#: :mod:`.fastdecode`) or ``reference`` (the torch fixed-point decoder that specifies it).
DECODER_ENV = "ULBC_OVERFIT_DECODER"
DECODERS = ("compiled", "reference")
