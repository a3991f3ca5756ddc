"""CompressAI's result-file layout: export a study's curves to it, and read published curves from it.

CompressAI's ``eval_model`` and ``bench`` write one JSON file per method::

    {"name": ..., "description": ..., "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...],
     "encoding_time": [...], "decoding_time": [...]}}

with one list entry per rate point (dataset means); ``compressai.utils.plot`` draws them. ulbc
writes that layout from its summary (every measured metric column, ``psnr_rgb`` as ``psnr-rgb``
and so on), and reads such files as *external* curves: published points taken as given, drawn in
the RD plots and BD-rated against the study's anchor, labelled as not measured by the study.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from . import __version__
from .errors import InputError
from .fsutil import atomic_path

#: ulbc summary column -> CompressAI result key, where the names differ beyond '_' -> '-'.
KEYS = {"psnr_rgb": "psnr-rgb", "ms_ssim_rgb": "ms-ssim-rgb", "encode_s": "encoding_time",
        "decode_s": "decoding_time"}
#: Summary columns never exported (counts, derived dB forms CompressAI computes itself, labels).
_SKIPPED = {"n_items", "n_failed", "n_lossless", "ms_ssim_db", "ms_ssim_y_db", "bpp_total", "payload_bpp",
            "rate_value", "dataset_metric_note"}
_LABELS = {"dataset", "method", "codec", "rate_label", "source"}
#: Marks a summary row that comes from a published curve, not from the study.
EXTERNAL = "external"


def result_key(column: str) -> str:
    return KEYS.get(column, column.replace("_", "-"))


def export_compressai_json(summary: pd.DataFrame, outdir: str | os.PathLike) -> list[Path]:
    """One ``<outdir>/<dataset>/<method>.json`` per (dataset, method) of a study summary, rate
    points ordered by bpp. A column with a NaN at some rate point is left out of that file (JSON
    has no NaN, and CompressAI's plot cannot draw a gap); the description names what was left out."""
    if "source" in summary.columns:
        summary = summary[summary["source"].fillna("") == ""]
    written = []
    for (dataset, method), part in summary.groupby(["dataset", "method"], sort=True):
        part = part.sort_values("bpp", kind="mergesort")
        results, dropped = {}, []
        for column in part.columns:
            if column in _LABELS or column in _SKIPPED or not pd.api.types.is_numeric_dtype(part[column]):
                continue
            values = part[column].astype("float64").tolist()
            if all(math.isfinite(v) for v in values):
                results[result_key(column)] = values
            elif any(math.isfinite(v) for v in values):
                dropped.append(column)
        codec = part["codec"].iloc[0]
        description = (f"ulbc {__version__}: codec {codec}, {len(part)} rate point(s), means over "
                       f"{int(part['n_items'].min())} item(s) per point, bpp from the bitstream file sizes")
        if dropped:
            description += f"; left out (not finite at every point): {', '.join(dropped)}"
        record = {"name": method, "description": description, "results": results}
        dest = Path(outdir) / str(dataset) / f"{method}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        written.append(dest)
    return written


def read_compressai_json(path: str | os.PathLike, dataset: str, name: str | None = None) -> pd.DataFrame:
    """A published curve as summary rows of ``dataset`` (method ``name``, else the file's ``name``).

    Known keys become the ulbc columns (``psnr-rgb`` -> ``psnr_rgb``, ``ms-ssim-rgb`` ->
    ``ms_ssim_rgb`` and ``ms_ssim_db``); every list must have one number per rate point."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read reference results ({' '.join(str(exc).split())})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a JSON file ({' '.join(str(exc).split())[:120]})") from None
    results = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or "bpp" not in results:
        raise InputError(f"{path}: not a CompressAI result file (no results.bpp)")
    columns = {key.replace("-", "_"): values for key, values in results.items()}
    columns = {{"encoding_time": "encode_s", "decoding_time": "decode_s"}.get(k, k): v for k, v in columns.items()}
    length = None
    for key, values in columns.items():
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise InputError(f"{path}: results.{key} must be a list of numbers")
        if length is not None and len(values) != length:
            raise InputError(f"{path}: results lists differ in length ({key} has {len(values)}, bpp {length})")
        length = len(values) if length is None else length
    if not length:
        raise InputError(f"{path}: results.bpp is empty")
    method = name or str(data.get("name") or path.stem)
    frame = pd.DataFrame({key: [float(v) for v in values] for key, values in columns.items()})
    if "ms_ssim_rgb" in frame:
        frame["ms_ssim_db"] = -10.0 * frame["ms_ssim_rgb"].rsub(1.0).map(math.log10)
    frame.insert(0, "dataset", dataset)
    frame.insert(1, "method", method)
    frame.insert(2, "codec", EXTERNAL)
    frame.insert(3, "rate_label", [f"point{i}" for i in range(length)])
    frame.insert(4, "rate_value", [float(i) for i in range(length)])
    frame["source"] = f"{EXTERNAL}: {path.name}"
    return frame.sort_values("bpp", kind="mergesort").reset_index(drop=True)
