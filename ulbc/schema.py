"""The fixed schema of result rows: the contract between shard jobs and the aggregation.

One row per (dataset, item, method, rate point). Metric columns are NaN when a metric is undefined
for the item (MS-SSIM on images under 161 pixels on a side) or when ``status`` is not "ok".

Video datasets add two kinds of rows, told apart by ``level``: ``frame`` rows (one per frame, item
``<clip>/<frame>``) and ``clip`` rows (one per clip: its bits over all its frames, the mean of its
frames' metrics). Image codecs code each frame on its own, so their frame rows carry real bytes and
the clip row sums them; a video codec's bits exist only per clip, so its frame rows have null bytes
and NaN bpp. Summaries and BD-rates use ``image`` and ``clip`` rows only.
"""

from __future__ import annotations

import pyarrow as pa

METRIC_ROW_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("item", pa.string()),
        pa.field("method", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("rate_label", pa.string()),
        pa.field("rate_param", pa.string()),
        pa.field("rate_value", pa.float64()),
        pa.field("codec_options", pa.string()),  # JSON of the encoder options used
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),  # size of the bitstream file, container included
        pa.field("payload_bytes", pa.int64()),  # the codec's own stream only
        pa.field("bpp", pa.float64()),  # 8 * bytes / (width * height)
        pa.field("payload_bpp", pa.float64()),
        pa.field("mse_rgb", pa.float64()),
        pa.field("psnr_rgb", pa.float64()),
        pa.field("ms_ssim_rgb", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("decode_s", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("status", pa.string()),  # ok | encode_error | decode_error
        pa.field("error", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("codec_version", pa.string()),
        pa.field("code_digest", pa.string()),  # provenance.code_digest: the code that made the row
        pa.field("ulbc_version", pa.string()),
        pa.field("git_commit", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("library_versions", pa.string()),  # JSON {package: version}
        # Read from the bitstream by codecs that report them (null otherwise): the rate split of the
        # overfitted codecs (network parameters, LotteryCodec mask, latents; the rest of 8*bytes is
        # headers) and the decoder's multiply-accumulates per pixel.
        pa.field("bits_nn", pa.float64()),
        pa.field("bits_mask", pa.float64()),
        pa.field("bits_latent", pa.float64()),
        pa.field("macs_per_pixel", pa.float64()),
        pa.field("encode_info", pa.string()),  # JSON of encoder-side facts (training time, estimated rate, ...)
        pa.field("level", pa.string()),  # image | frame | clip
        pa.field("clip", pa.string()),  # the clip a frame or clip row belongs to ("" for images)
        pa.field("frames", pa.int32()),  # frames the row covers (1 for images and frames)
    ]
)

LEVELS = ("image", "frame", "clip")
#: Rows that are whole coded items: what rate-distortion summaries are made of.
RD_LEVELS = ("image", "clip")

BITSTREAM_STAT_COLUMNS = ("bits_nn", "bits_mask", "bits_latent", "macs_per_pixel")

METRIC_COLUMNS = ("psnr_rgb", "ms_ssim_rgb")
TIMING_COLUMNS = ("encode_s", "decode_s")
