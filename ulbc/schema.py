"""The fixed schema of result rows: the contract between shard jobs and the aggregation.

One row per (dataset, item, method, rate point). The metric columns are those of every per-item
metric in the registry (:mod:`ulbc.metrics`), in registration order; a column is null when its
metric was not measured in the study, and NaN when it is undefined for the item (MS-SSIM on images
under 161 pixels on a side) or ``status`` is not "ok". ``metric_info`` records, per metric
measured, its options and the sha256 of each weight file it loaded. Distribution metrics (FID,
KID) have no per-item value; they live in a per-rate-point table (:data:`DATASET_METRIC_SCHEMA`).

Video datasets add two kinds of rows, told apart by ``level``: ``frame`` rows (one per frame, item
``<clip>/<frame>``) and ``clip`` rows (one per clip: its bits over all its frames, the mean of its
frames' metrics). Image codecs code each frame on its own, so their frame rows carry real bytes and
the clip row sums them; a video codec's bits exist only per clip, so its frame rows have null bytes
and NaN bpp. Summaries and BD-rates use ``image`` and ``clip`` rows only.

Codecs that decode one file twice (``<base>+adapter``: for viewing, and through a network that
adapts the image for a vision model) add ``target`` "machine" rows next to the "human" ones: same
file, same bytes, metrics of the machine decode, method ``<method>@machine`` (:func:`target_method`),
so every summary, curve and BD-rate table shows them as a method of their own.
"""

from __future__ import annotations

import pyarrow as pa

from .metrics import dataset_metrics, item_columns

_ARROW_TYPES = {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string()}
#: The metric columns of a row, derived from the registry.
METRIC_COLUMNS = tuple(column.name for column in item_columns())

#: Rates an encoder may report in its info next to the file's (null where it reports none).
ENCODER_RATE_COLUMNS = ("bpp_estimated", "bpp_paper")

METRIC_ROW_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("item", pa.string()),
        pa.field("method", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("target", pa.string()),  # human | machine: who the decode was for (TARGETS)
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
        # The encoder's own estimate of bpp from its entropy model's likelihoods, where it makes one
        # (CompressAI's models: their forward() estimate, next to the file's real bpp).
        pa.field("bpp_estimated", pa.float64()),
        # The rate as the method's paper counts it, where that differs from the file (MISC's formula).
        pa.field("bpp_paper", pa.float64()),
    ]
    + [pa.field(column.name, _ARROW_TYPES[column.dtype]) for column in item_columns()]
    + [
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
        pa.field("metric_info", pa.string()),  # JSON {metric: {options, weights: {name: sha256}}}
        pa.field("codec_weights", pa.string()),  # JSON {file, sha256} of the codec's model weights ("" if none)
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
#: Who a decode is for: viewing, or a vision model (Codec.targets).
TARGETS = ("human", "machine")


def target_method(method: str, target: str) -> str:
    """The method name of a target's rows: ``method`` for humans, ``method@machine`` for machines."""
    return method if target == "human" else f"{method}@{target}"

#: Rows that are whole coded items: what rate-distortion summaries are made of.
RD_LEVELS = ("image", "clip")

BITSTREAM_STAT_COLUMNS = ("bits_nn", "bits_mask", "bits_latent", "macs_per_pixel")

TIMING_COLUMNS = ("encode_s", "decode_s")

#: Keys of a rate point: what a distribution metric (FID, KID) is measured over.
RATE_POINT_KEYS = ("dataset", "method", "codec", "rate_label", "rate_value")
#: One row per (dataset, method, rate point) with the values of the dataset-level metrics; ``n_items``
#: ok items were measured; ``note`` says why a value is NaN.
DATASET_METRIC_SCHEMA = pa.schema(
    [pa.field(key, pa.float64() if key == "rate_value" else pa.string()) for key in RATE_POINT_KEYS]
    + [pa.field("n_items", pa.int64())]
    + [pa.field(column.name, _ARROW_TYPES[column.dtype]) for cls in dataset_metrics() for column in cls.columns]
    + [pa.field("metric_info", pa.string()), pa.field("code_digest", pa.string()), pa.field("note", pa.string())]
)
