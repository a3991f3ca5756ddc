"""What the codecs' output looks like: decoded crops side by side at matched bitrates.

For a few items of each dataset, every method contributes the decode of its rate point nearest each
target bpp (nearest on a log scale, and only within :data:`MATCH_FACTOR` of the target), cropped to
the item's most detailed window, with its bpp and metrics under it and, where FLIP is a metric of
the study, the FLIP error map of the same window. For a clip, each cell is a strip of a few frames.

Only the bitstreams shown are decoded, straight from the study's shard packs, so the comparison of
a 10^5-item study costs what a few items cost. Crops are lossless WebP files (a few tens of kB) and
``index.json`` names the pack, entry, frame and box behind every one of them: a crop's pixels are
exactly those of that bitstream's decode.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, InputError
from .manifest import read_manifest, shard_name
from .metrics import METRICS, read_metric_info
from .pack import PackReader, bitstream_entry
from .schema import RD_LEVELS

#: A rate point is shown for a target only if its bpp is within this factor of the target.
MATCH_FACTOR = 2.0
DEFAULT_TARGETS = (0.05, 0.1, 0.25, 0.5)
SELECTIONS = ("first", "extremes")
INDEX_FORMAT = 1
#: FLIP's filters reach beyond a pixel's neighbours: the map is computed on the crop plus this margin.
FLIP_MARGIN = 32


@dataclass(frozen=True)
class ComparisonSettings:
    items: int = 2
    select: str = "first"
    targets: tuple[float, ...] = DEFAULT_TARGETS
    crop: int = 192
    frames: int = 3

    def __post_init__(self) -> None:
        if self.items < 0:
            raise ConfigError(f"visual comparison: items must be >= 0, got {self.items}")
        if self.select not in SELECTIONS:
            raise ConfigError(f"visual comparison: select {self.select!r}: expected one of {', '.join(SELECTIONS)}")
        if not self.targets or any(not (math.isfinite(t) and t > 0) for t in self.targets):
            raise ConfigError(f"visual comparison: target bpp values must be positive, got {list(self.targets)}")
        if not 16 <= self.crop <= 1024:
            raise ConfigError(f"visual comparison: crop must be 16..1024 pixels, got {self.crop}")
        if self.frames < 1:
            raise ConfigError(f"visual comparison: frames must be >= 1, got {self.frames}")


def pack_path(results: str | os.PathLike, dataset: str, method: str, rate_label: str, shard: int) -> Path:
    """The shard pack of a study's results folder (the workflow's ``bitstreams/{dataset}/{method}/
    {rate}/{shard}.zip``)."""
    return Path(results) / "bitstreams" / dataset / method / rate_label / f"{shard_name(shard)}.zip"


def manifest_paths(results: str | os.PathLike, dataset: str) -> tuple[Path, Path]:
    """(image manifest, clip manifest) of a dataset in a study's results folder."""
    folder = Path(results) / "manifests"
    return folder / f"{dataset}.parquet", folder / f"{dataset}.clips.parquet"


def detail_box(image: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the ``size``-pixel window with the most luma gradient energy, on a
    grid of ``size // 4`` steps (the first such window on ties); the whole image if it is smaller."""
    height, width = image.shape[:2]
    w, h = min(size, width), min(size, height)
    luma = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    energy = np.zeros_like(luma)
    energy[:, 1:] += np.abs(np.diff(luma, axis=1))
    energy[1:, :] += np.abs(np.diff(luma, axis=0))
    total = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step = max(1, size // 4)
    xs = sorted({*range(0, width - w + 1, step), width - w})
    ys = sorted({*range(0, height - h + 1, step), height - h})
    best, box = -1.0, (0, 0, w, h)
    for y in ys:
        for x in xs:
            value = total[y + h, x + w] - total[y, x + w] - total[y + h, x] + total[y, x]
            if value > best + 1e-9:
                best, box = value, (x, y, w, h)
    return box


def crop(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    x, y, w, h = box
    return np.ascontiguousarray(image[y : y + h, x : x + w, :3])


def webp_bytes(rgb: np.ndarray, *, lossless: bool = True) -> bytes:
    """WebP of an 8-bit RGB array: lossless (decodes to the same pixels) for the crops, lossy
    (quality 85, a quarter of the size) for the error maps, which are pictures of numbers. A low
    effort (method 2; for lossless, quality is effort): a tenth of the time of the default, files
    about 7 % larger."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    if lossless:
        image.save(buffer, "WEBP", lossless=True, quality=50, method=2, exact=True)
    else:
        image.save(buffer, "WEBP", quality=85, method=2)
    return buffer.getvalue()


def read_webp(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def flip_error_map(reference: np.ndarray, decoded: np.ndarray, box: Sequence[int], pixels_per_degree: float) -> np.ndarray:
    """FLIP's per-pixel error in ``box``, magma-coloured as 8-bit RGB (black: no visible error)."""
    import flip_evaluator

    x, y, w, h = box
    x0, y0 = max(0, x - FLIP_MARGIN), max(0, y - FLIP_MARGIN)
    x1, y1 = min(reference.shape[1], x + w + FLIP_MARGIN), min(reference.shape[0], y + h + FLIP_MARGIN)

    def unit(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[y0:y1, x0:x1, :3], dtype=np.float32) / np.float32(255.0)

    with contextlib.redirect_stdout(io.StringIO()):
        coloured, _, _ = flip_evaluator.evaluate(unit(reference), unit(decoded), "LDR", applyMagma=True,
                                                 computeMeanError=False, parameters={"ppd": float(pixels_per_degree)})
    coloured = np.clip(np.asarray(coloured, dtype=np.float64)[y - y0 : y - y0 + h, x - x0 : x - x0 + w], 0, 1)
    return (coloured * 255 + 0.5).astype(np.uint8)


# --- what to show ------------------------------------------------------------------------------------------


def caption_columns(rows: pd.DataFrame) -> list[str]:
    """The quality columns a crop's caption shows: the RD columns of the item-level, non-task metrics
    the rows measured (from the metric registry), in registry order."""
    from .rd import measured_metrics

    columns = []
    for name in measured_metrics(rows):
        cls = METRICS[name]
        if cls.level == "item" and not cls.task:
            columns += [c.name for c in cls.columns if c.rd and c.name in rows.columns]
    return columns


def column_short_name(column: str) -> str:
    """psnr_rgb -> PSNR, psnr_y -> PSNR-Y, flip -> FLIP."""
    return re.sub(r"_rgb$", "", column).upper().replace("_", "-")


def format_value(column: str, value: float) -> str:
    if not math.isfinite(value):
        return f"{column_short_name(column)} {value:g}"
    unit = " dB" if "(dB)" in METRICS_LABELS.get(column, "") else ""
    return f"{column_short_name(column)} {value:.2f}{unit}" if unit else f"{column_short_name(column)} {value:.3f}"


METRICS_LABELS = {c.name: c.label for cls in METRICS.values() for c in (*cls.columns, *cls.derived)}


def _flip_ppd(rows: pd.DataFrame) -> float | None:
    """FLIP's pixels per degree as the study measured it, or None if FLIP is not a study metric."""
    from .metrics.flip import DEFAULT_PIXELS_PER_DEGREE

    if "flip" not in caption_columns(rows):
        return None
    for text in rows["metric_info"].dropna().unique():
        options = read_metric_info(text).get("flip", {}).get("options", {})
        if "pixels_per_degree" in options:
            return float(options["pixels_per_degree"])
    return DEFAULT_PIXELS_PER_DEGREE


def select_items(rows: pd.DataFrame, order: Sequence[str], settings: ComparisonSettings) -> list[str]:
    """Items of one dataset to show: the first in manifest order, or (``extremes``) the most and the
    least compressible in turn (the mean over every rate point of an item's bpp relative to the
    rate point's mean bpp)."""
    present = [item for item in order if item in set(rows["item"])]
    if settings.select == "first" or len(present) <= settings.items:
        return present[: settings.items]
    point_mean = rows.groupby(["method", "rate_label"])["bpp"].transform("mean")
    relative = (rows["bpp"] / point_mean).groupby(rows["item"]).mean()
    ranked = sorted(present, key=lambda item: (relative.get(item, math.inf), present.index(item)))
    chosen: list[str] = []
    low, high = 0, len(ranked) - 1
    while len(chosen) < settings.items:
        chosen.append(ranked[low] if len(chosen) % 2 == 0 else ranked[high])
        low, high = (low + 1, high) if len(chosen) % 2 == 1 else (low, high - 1)
    return chosen


def nearest_point(points: pd.DataFrame, target: float, targets: Sequence[float] | None = None) -> pd.Series | None:
    """The row of ``points`` whose bpp is nearest ``target`` on a log scale, if within MATCH_FACTOR.
    With ``targets`` (all the columns), a rate point only counts for the target it is nearest to,
    so one file never fills two columns."""
    usable = points[np.isfinite(points["bpp"]) & (points["bpp"] > 0)]
    if targets is not None and len(usable):
        logs = np.log(usable["bpp"].to_numpy())[:, None]
        home = np.asarray(targets, dtype=np.float64)[np.argmin(np.abs(logs - np.log(targets)[None, :]), axis=1)]
        usable = usable[home == target]
    if usable.empty:
        return None
    distance = np.abs(np.log(usable["bpp"].to_numpy()) - math.log(target))
    best = int(np.argmin(distance))
    return usable.iloc[best] if distance[best] <= math.log(MATCH_FACTOR) + 1e-12 else None


def method_order(methods: Sequence[str], anchor: str | None) -> list[str]:
    return sorted(methods, key=lambda m: (m != anchor, m))


# --- building it -------------------------------------------------------------------------------------------


class _Sources:
    """Originals and bitstreams of one dataset, loaded on demand (each pack opened once)."""

    def __init__(self, results: Path, dataset: str, items_per_job: int, device: str) -> None:
        from .runner import load_verified

        self.results, self.dataset, self.items_per_job, self.device = results, dataset, items_per_job, device
        self._load_verified = load_verified
        image_path, clip_path = manifest_paths(results, dataset)
        self.images, self.image_root, _ = read_manifest(image_path)
        self.clips, self.clip_root, _ = read_manifest(clip_path) if clip_path.is_file() else (None, None, None)
        self._image_index = {item: i for i, item in enumerate(self.images["item"])}
        self._clip_index = {item: i for i, item in enumerate(self.clips["item"])} if self.clips is not None else {}
        self._packs: dict[Path, PackReader] = {}

    def close(self) -> None:
        for pack in self._packs.values():
            pack.close()

    def original(self, item: str) -> np.ndarray:
        row = self.images.iloc[self._image_index[item]]
        return self._load_verified(self.image_root, row)[1]

    def frames_of(self, clip: str) -> list[str]:
        return sorted(self.images.loc[self.images["clip"] == clip, "item"])

    def locate(self, item: str, method: str, rate_label: str, video: bool) -> tuple[Path, str]:
        index = (self._clip_index if video else self._image_index).get(item)
        if index is None:
            raise InputError(f"{self.dataset}: item {item!r} is not in the {'clip' if video else 'image'} manifest")
        return pack_path(self.results, self.dataset, method, rate_label, index // self.items_per_job), bitstream_entry(item)

    def decode(self, pack_file: Path, entry: str) -> np.ndarray:
        from .codecs import decode_bitstream_data

        if pack_file not in self._packs:
            self._packs[pack_file] = PackReader(pack_file)
        data = self._packs[pack_file].read(entry)
        return decode_bitstream_data(data, device=self.device, name=f"{pack_file}:{entry}")[2]


def _frame_picks(count: int, wanted: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, min(wanted, count))})


class _Writer:
    """Writes crop files under a folder and records them for the index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.records: list[dict[str, Any]] = []

    def add(self, rgb: np.ndarray, relpath: str, *, lossless: bool = True, **record: Any) -> dict[str, Any]:
        dest = self.root / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = webp_bytes(rgb, lossless=lossless)
        dest.write_bytes(data)
        entry = {"file": relpath, **record}
        self.records.append(entry)
        return {**entry, "data": data}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def build_comparison(metrics: pd.DataFrame, results: str | os.PathLike, outdir: str | os.PathLike, *,
                     items_per_job: int, settings: ComparisonSettings = ComparisonSettings(),
                     anchor: str | None = None, labels: Mapping[str, str] | None = None,
                     device: str = "cpu") -> dict[str, Any]:
    """Write ``outdir`` (whole, or not at all): ``index.json``, the crops, and one standalone HTML
    page per dataset. ``metrics`` is the study's per-item table; ``labels`` map methods to the
    labels shown (default: the method names). Returns the index."""
    results, outdir = Path(results), Path(outdir)
    labels = dict(labels or {})
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".part", dir=outdir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary folder
    try:
        index = _build(metrics, results, staging, items_per_job=items_per_job, settings=settings, anchor=anchor,
                       labels=labels, device=device)
        (staging / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if outdir.exists():
            shutil.rmtree(outdir)
        os.replace(staging, outdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


def _build(metrics: pd.DataFrame, results: Path, out: Path, *, items_per_job: int, settings: ComparisonSettings,
           anchor: str | None, labels: dict[str, str], device: str) -> dict[str, Any]:
    from .codecs import codec_class

    human = metrics[(metrics["target"] == "human") & (metrics["status"] == "ok")]
    columns = caption_columns(human)
    ppd = _flip_ppd(human)
    writer = _Writer(out)
    index: dict[str, Any] = {"format": INDEX_FORMAT, "targets_bpp": list(settings.targets), "crop": settings.crop,
                             "match_factor": MATCH_FACTOR, "caption_columns": columns,
                             "flip_pixels_per_degree": ppd, "datasets": {}, "crops": writer.records}
    for dataset in sorted(metrics["dataset"].unique()):
        rows = human[(human["dataset"] == dataset) & human["level"].isin(RD_LEVELS)]
        sources = _Sources(results, dataset, items_per_job, device)
        try:
            video = bool((rows["level"] == "clip").any())
            order = list(sources.clips["item"]) if video else list(sources.images["item"])
            items = select_items(rows, order, settings) if settings.items else []
            methods = method_order(sorted(rows["method"].unique()), anchor)
            sections = []
            for item in items:
                sections.append(_item_section(dataset, item, rows[rows["item"] == item], methods, sources, writer,
                                              settings=settings, columns=columns, ppd=ppd, video=video,
                                              codec_class=codec_class))
            index["datasets"][dataset] = {"items": items, "video": video, "methods": methods}
            page = _page(dataset, sections, settings=settings, labels=labels, columns=columns, ppd=ppd, video=video)
            (out / f"{_slug(dataset)}.html").write_text(page, encoding="utf-8")
        finally:
            sources.close()
    return index


def _item_section(dataset: str, item: str, rows: pd.DataFrame, methods: list[str], sources: _Sources,
                  writer: _Writer, *, settings: ComparisonSettings, columns: list[str], ppd: float | None,
                  video: bool, codec_class) -> dict[str, Any]:
    base = f"crops/{_slug(dataset)}/{_slug(item)}"
    if video:
        frame_items = sources.frames_of(item)
        picks = _frame_picks(len(frame_items), settings.frames)
        originals = [sources.original(frame_items[i]) for i in picks]
    else:
        frame_items, picks = [item], [0]
        originals = [sources.original(item)]
    box = detail_box(originals[len(originals) // 2], settings.crop)
    height, width = originals[0].shape[:2]
    section = {"item": item, "box": box, "width": width, "height": height, "frames": picks,
               "frame_count": len(frame_items), "methods": methods, "original": [], "cells": {}}
    for frame, image in zip(picks, originals):
        section["original"].append(writer.add(crop(image, box), f"{base}/original{_frame_suffix(video, frame)}.webp",
                                              kind="original", dataset=dataset, item=item, frame=frame, box=list(box),
                                              source=frame_items[frame]))
    for method in methods:
        points = rows[rows["method"] == method]
        for target in settings.targets:
            row = nearest_point(points, target, settings.targets)
            if row is None:
                continue
            codec_is_video = codec_class(row["codec"]).media == "video"
            caption = {"bpp": float(row["bpp"]), **{c: float(row[c]) for c in columns if pd.notna(row.get(c))}}
            cell = {"rate_label": row["rate_label"], "caption": caption, "decoded": [], "flip": []}
            decoded_clip = None
            for frame, image in zip(picks, originals):
                if codec_is_video or not video:
                    pack_file, entry = sources.locate(item, method, row["rate_label"], video=codec_is_video)
                    if decoded_clip is None:
                        decoded_clip = sources.decode(pack_file, entry)
                    decoded = decoded_clip[frame] if decoded_clip.ndim == 4 else decoded_clip
                else:
                    pack_file, entry = sources.locate(frame_items[frame], method, row["rate_label"], video=False)
                    decoded = sources.decode(pack_file, entry)
                if decoded.shape[:2] != image.shape[:2]:
                    raise InputError(f"{pack_file}:{entry}: decodes to {decoded.shape[1]}x{decoded.shape[0]}, "
                                     f"the original is {image.shape[1]}x{image.shape[0]}")
                name = f"{base}/{_slug(method)}/{_slug(row['rate_label'])}{_frame_suffix(video, frame)}"
                record = dict(dataset=dataset, item=item, method=method, rate_label=row["rate_label"],
                              target_bpp=target, bpp=float(row["bpp"]), frame=frame, box=list(box),
                              pack=str(pack_file), entry=entry,
                              frame_in_bitstream=frame if decoded_clip is not None and decoded_clip.ndim == 4 else None)
                cell["decoded"].append(writer.add(crop(decoded, box), f"{name}.webp", kind="decoded", **record))
                if ppd is not None:
                    cell["flip"].append(writer.add(flip_error_map(image, decoded, box, ppd), f"{name}.flip.webp",
                                                   kind="flip_map", lossless=False, **record))
            section["cells"][(method, target)] = cell
    return section


def _frame_suffix(video: bool, frame: int) -> str:
    return f"_f{frame:04d}" if video else ""


# --- the page ----------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; } h3 { font-size: 14px; }
table.ulbc-visual { border-collapse: collapse; }
.ulbc-visual th, .ulbc-visual td { padding: 4px 6px; vertical-align: top; text-align: center; }
.ulbc-visual th.method { text-align: left; white-space: nowrap; }
.ulbc-visual img { display: block; margin: 0 auto; image-rendering: pixelated; }
.ulbc-visual .caption { font-size: 11px; line-height: 1.3; color: #333; }
.ulbc-visual .none { color: #999; font-size: 11px; }
.strip { display: flex; flex-direction: column; gap: 2px; align-items: center; }
p.lead { max-width: 1100px; }
"""


def _img(record: Mapping[str, Any], alt: str) -> str:
    data = base64.b64encode(record["data"]).decode("ascii")
    return (f'<img src="data:image/webp;base64,{data}" alt="{html.escape(alt)}" '
            f'data-file="{html.escape(record["file"])}" title="{html.escape(alt)}">')


def _strip(records: Sequence[Mapping[str, Any]], alt: str) -> str:
    if len(records) == 1:
        return _img(records[0], alt)
    return '<div class="strip">' + "".join(_img(r, f"{alt}, frame {r['frame']}") for r in records) + "</div>"


def _caption(caption: Mapping[str, float], rate_label: str) -> str:
    quality = " · ".join(format_value(c, v) for c, v in caption.items() if c != "bpp")
    return (f'<div class="caption"><b>{caption["bpp"]:.3f} bpp</b> ({html.escape(rate_label)})<br>'
            f"{html.escape(quality)}</div>")


def _page(dataset: str, sections: list[dict[str, Any]], *, settings: ComparisonSettings, labels: Mapping[str, str],
          columns: list[str], ppd: float | None, video: bool) -> str:
    targets = " / ".join(f"{t:g}" for t in settings.targets)
    lead = (f"Decoded crops of {len(sections)} item(s) of <b>{html.escape(dataset)}</b>, one per method at the rate "
            f"point nearest each target ({targets} bpp; nearest on a log scale and within ×{MATCH_FACTOR:g} of the "
            "target, else the cell is empty; a file fills only the column of the target it is nearest to). Each crop is the item's most detailed "
            f"{settings.crop}×{settings.crop} window, shown at its own pixels (no scaling), decoded from the "
            "bitstream file named in <code>index.json</code>. Under each: the file's bpp and the item's metrics "
            f"({', '.join(column_short_name(c) for c in columns) or 'none measured'}).")
    if ppd is not None:
        lead += (f" Below each crop: the FLIP error map of the same window ({ppd:g} pixels per degree; "
                 "black = no visible difference, yellow = large).")
    if video:
        lead += (f" Clips show {settings.frames} frame(s) spread over the clip, top to bottom, at the clip's bpp "
                 "(all its frames' bits over all its pixels).")
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>visual comparison: {html.escape(dataset)}"
             f"</title>\n<style>{_STYLE}</style></head><body>\n<h1>Visual comparison — {html.escape(dataset)}</h1>\n"
             f'<p class="lead">{lead}</p>\n']
    if not sections:
        parts.append("<p>No item of this dataset was selected (<code>visual.items</code> is 0).</p>\n")
    for section in sections:
        x, y, w, h = section["box"]
        frames = (f", frames {', '.join(map(str, section['frames']))} of {section['frame_count']}" if video else "")
        parts.append(f"<h2>{html.escape(section['item'])} ({section['width']}×{section['height']}; crop {w}×{h} at "
                     f"x={x}, y={y}{frames})</h2>\n")
        parts.append('<table class="ulbc-visual"><thead><tr><th class="method">method</th><th>original</th>'
                     + "".join(f"<th>≈ {t:g} bpp</th>" for t in settings.targets) + "</tr></thead><tbody>\n")
        methods = section["methods"]
        first = True
        for method in methods:
            label = labels.get(method, method)
            row = [f'<tr><th class="method">{html.escape(label)}</th>']
            if first:
                row.append(f'<td rowspan="{len(methods)}">{_strip(section["original"], "original")}'
                           '<div class="caption">original</div></td>')
                first = False
            for target in settings.targets:
                cell = section["cells"].get((method, target))
                if cell is None:
                    row.append(f'<td class="none">no rate point within ×{MATCH_FACTOR:g} of {target:g} bpp</td>')
                    continue
                alt = f"{label} {cell['rate_label']}"
                body = _strip(cell["decoded"], alt) + _caption(cell["caption"], cell["rate_label"])
                if cell["flip"]:
                    body += _strip(cell["flip"], f"FLIP error map, {alt}")
                row.append(f"<td>{body}</td>")
            parts.append("".join(row) + "</tr>\n")
        parts.append("</tbody></table>\n")
    parts.append("</body></html>\n")
    return "".join(parts)


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no visual comparison index") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a JSON visual comparison index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise InputError(f"{path}: not a visual comparison index of format {INDEX_FORMAT}")
    return index


def iter_crops(index: Mapping[str, Any], kind: str | None = None) -> Iterator[dict[str, Any]]:
    for record in index["crops"]:
        if kind is None or record["kind"] == kind:
            yield record
