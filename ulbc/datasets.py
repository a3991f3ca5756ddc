"""Where a study's items come from: a registry of public datasets, the bundled samples, local files.

Registry files are downloaded with :func:`ulbc.download.download` and checked against published
sha256 values (each one's origin is noted beside it). A file whose hash could not be tied to its
URL has ``sha256=None`` and is only fetched with ``allow_unverified=True``.
"""

from __future__ import annotations

import glob as globlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from .archive import safe_extract
from .download import download, sha256_file
from .errors import ConfigError
from .fsutil import atomic_path, write_bytes_atomic

#: Extensions a ``local`` folder is searched for (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp"})
#: Real photographs shipped inside the scikit-image wheel: the network-free default dataset.
SAMPLE_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
BUILTIN_SOURCES = ("samples", "local")
#: Written (atomically) once every file of a registry dataset is downloaded and extracted.
COMPLETE_MARKER = ".ulbc-complete.json"
EXTRACTED_PREFIX = ".ulbc-extracted-"
ARCHIVE_DIR = ".archives"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None  # None: no published hash could be tied to this URL
    filename: str
    size: int | None = None
    extract: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    media: Literal["image", "video"]
    description: str
    homepage: str
    license: str
    files: tuple[RemoteFile, ...]
    include: tuple[str, ...]  # globs, relative to the materialised folder
    # Raw-video layout for media="video": width, height, pix_fmt, fps (and frames per sequence).
    video: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def verified(self) -> bool:
        return all(f.sha256 for f in self.files)


# -- Kodak --------------------------------------------------------------------------------------------
# sha256 of the PNGs as served by r0k.us: repo frames-sg/j2k, docs/benchmark-corpora.md
# (commit 1df41d43d5da90350a246e885b476b852454ac98), a `curl https://r0k.us/graphics/kodak/kodak/kodimNN.png`
# followed by `sha256sum -c`. The same 24 values appear in other repositories' pin lists next to the
# r0k.us URL. These differ from the Zelex/images copy in shared/data/kodak (re-encoded PNGs).
_KODAK_SHA256 = (
    "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
)

KODAK = DatasetSpec(
    name="kodak",
    media="image",
    description="Kodak Lossless True Color Image Suite: 24 photos, 768x512 / 512x768",
    homepage="https://r0k.us/graphics/kodak/",
    license="released by the Eastman Kodak Company for unrestricted usage",
    files=tuple(
        RemoteFile(
            url=f"https://r0k.us/graphics/kodak/kodak/kodim{i:02d}.png",
            sha256=digest,
            filename=f"kodim{i:02d}.png",
        )
        for i, digest in enumerate(_KODAK_SHA256, start=1)
    ),
    include=("kodim*.png",),
)

# -- CLIC 2020 ----------------------------------------------------------------------------------------
# URL, size and sha256: repo tensorflow/datasets, tensorflow_datasets/url_checksums/clic.txt
# (commit 05e20adf23efc0aedde923d7e63538a8da87fed8).
CLIC2020 = DatasetSpec(
    name="clic2020",
    media="image",
    description="CLIC 2020 professional validation set: 41 high-resolution photos",
    homepage="https://clic.compression.cc/2020/",
    license="CLIC challenge terms (see homepage)",
    files=(
        RemoteFile(
            url="https://data.vision.ee.ethz.ch/cvl/clic/professional_valid_2020.zip",
            sha256="00be38092ade2ab5163b65f7f6523d46c7bca147007f559adbb02c0afc236b7d",
            filename="professional_valid_2020.zip",
            size=134834429,
            extract=True,
        ),
    ),
    include=("**/*.png",),
)

# -- DIV2K ----------------------------------------------------------------------------------------------
# URL, size and sha256: repo tensorflow/datasets, tensorflow_datasets/url_checksums/div2k.txt
# (commit 1054f22dfd67025f459c5735206ab404dbb12a6e).
DIV2K = DatasetSpec(
    name="div2k",
    media="image",
    description="DIV2K validation set, high resolution: 100 photos, about 2040 px on the long side",
    homepage="https://data.vision.ee.ethz.ch/cvl/DIV2K/",
    license="academic research use (see homepage)",
    files=(
        RemoteFile(
            url="https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
            sha256="20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
            filename="DIV2K_valid_HR.zip",
            size=448993893,
            extract=True,
        ),
    ),
    include=("DIV2K_valid_HR/*.png",),
)

# -- UVG ------------------------------------------------------------------------------------------------
# No published sha256 of these archives could be found: sha256=None, fetched only when unverified
# downloads are allowed. The byte sizes are checked instead: repo ZhChessOvO/adaptive-chunk-coding,
# demo/restore_uvg_evaluation_samples.sh (commit 03d15037cc2f3f719a97f560c54850f5df9d1583); Beauty and
# ShakeNDry match a second file of that repository. The server names ReadySteadyGo "ReadySetGo".
_UVG_SEQUENCES = (
    # (name, archive bytes, frames)
    ("Beauty", 925430047, 600),
    ("Bosphorus", 680772328, 600),
    ("HoneyBee", 906770507, 600),
    ("Jockey", 770631599, 600),
    ("ReadySetGo", 832143797, 600),
    ("ShakeNDry", 460046003, 300),
    ("YachtRide", 724220168, 600),
)

UVG = DatasetSpec(
    name="uvg",
    media="video",
    description="UVG 1080p 8-bit 4:2:0 raw sequences (7), 120 fps",
    homepage="https://ultravideo.fi/dataset.html",
    license="non-commercial research use (see homepage for the exact terms)",
    files=tuple(
        RemoteFile(
            url=f"https://ultravideo.fi/video/{name}_1920x1080_120fps_420_8bit_YUV_RAW.7z",
            sha256=None,
            filename=f"{name}_1920x1080_120fps_420_8bit_YUV_RAW.7z",
            size=size,
            extract=True,
        )
        for name, size, _ in _UVG_SEQUENCES
    ),
    include=("**/*.yuv",),
    video={
        "width": 1920,
        "height": 1080,
        "pix_fmt": "yuv420p",
        "fps": 120,
        "frames": {name: frames for name, _, frames in _UVG_SEQUENCES},
    },
)

# -- COCO val2017 -------------------------------------------------------------------------------------
# URLs, sizes and sha256: repo tensorflow/datasets, tensorflow_datasets/url_checksums/coco2017.txt
# (commit 2282548bab4888cabcdca563e3ed01370e7a9bdc); the same values are in url_checksums/coco.txt.
COCO_VAL2017 = DatasetSpec(
    name="coco-val2017",
    media="image",
    description="COCO 2017 validation images (5000 JPEGs) with their annotations",
    homepage="https://cocodataset.org/",
    license="annotations CC BY 4.0; images under their Flickr Creative Commons licenses",
    files=(
        RemoteFile(
            url="http://images.cocodataset.org/zips/val2017.zip",
            sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
            filename="val2017.zip",
            size=815585330,
            extract=True,
        ),
        RemoteFile(
            url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
            sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
            filename="annotations_trainval2017.zip",
            size=252907541,
            extract=True,
        ),
    ),
    include=("val2017/*.jpg",),
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (KODAK, CLIC2020, DIV2K, UVG, COCO_VAL2017)}


def describe_source(entry: Mapping[str, Any]) -> str:
    """A dataset entry of a study config in words, for the report's datasets table."""
    kind = str(entry.get("source", ""))
    video = entry.get("video") or {}
    taken = []
    if video.get("first"):
        taken.append(f"from frame {video['first']}")
    if video.get("frames"):
        taken.append(f"{video['frames']} frames")
    if video.get("step", 1) != 1:
        taken.append(f"every {video['step']}th")
    if video.get("size"):
        taken.append("resized to {}×{}".format(*video["size"]))
    if entry.get("max_side"):
        taken.append(f"downscaled to at most {entry['max_side']} px on the longer side")
    suffix = f" (taken: {', '.join(taken)})" if taken else ""
    if kind == "samples":
        return (f"{len(SAMPLE_FILES)} photos bundled with scikit-image ({', '.join(SAMPLE_FILES)}; "
                "rocket.jpg is itself a JPEG)" + suffix)
    if kind == "sample-clip":
        return "the clip bundled with ulbc: 8 frames of Intel libvpl's \"cars\", 320×240" + suffix
    if kind == "local":
        pattern = f", {entry['pattern']}" if entry.get("pattern") else ""
        return f"local files: {entry.get('path', '')}{pattern}" + suffix
    spec = DATASETS.get(kind)
    if spec is not None:
        return f"{spec.description} ({spec.homepage})" + suffix
    return kind + suffix


def list_datasets() -> list[DatasetSpec]:
    return [DATASETS[name] for name in sorted(DATASETS)]


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join([*BUILTIN_SOURCES, *sorted(DATASETS)])
        raise ConfigError(f"unknown dataset {name!r}; known: {known}") from None


# -- fetching -----------------------------------------------------------------------------------------
def _marker_payload(spec: DatasetSpec, hashes: Mapping[str, str]) -> dict[str, Any]:
    return {
        "dataset": spec.name,
        "files": [
            {"filename": f.filename, "url": f.url, "sha256": hashes[f.filename], "verified": f.sha256 is not None}
            for f in spec.files
        ],
    }


def _local_file(folder: Path, remote: RemoteFile) -> Path:
    return folder / ARCHIVE_DIR / remote.filename if remote.extract else folder / remote.filename


def _already_complete(folder: Path, spec: DatasetSpec) -> bool:
    """Cheap check (no hashing): the marker lists this spec's files and they are still in place."""
    try:
        recorded = json.loads((folder / COMPLETE_MARKER).read_text())
        entries = {e["filename"]: e for e in recorded["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if set(entries) != {f.filename for f in spec.files}:
        return False
    for f in spec.files:
        entry = entries[f.filename]
        if entry.get("url") != f.url or (f.sha256 and entry.get("sha256") != f.sha256):
            return False
        path = _local_file(folder, f)
        if not path.is_file() or (f.size is not None and path.stat().st_size != f.size):
            return False
        if f.extract and not (folder / f"{EXTRACTED_PREFIX}{f.filename}.json").is_file():
            return False
    return True


def fetch_dataset(
    name: str,
    dest_root: str | os.PathLike,
    *,
    allow_unverified: bool = False,
    progress: bool = True,
) -> Path:
    """Download (and unpack) every file of registry dataset ``name`` into ``dest_root/name``.

    Plain files land in that folder; archives are kept under ``.archives/`` and extracted into the
    folder once (a per-archive done-file records it). Returns the folder.
    """
    spec = _spec(name)
    folder = Path(dest_root) / spec.name
    if _already_complete(folder, spec):
        return folder
    unverified = [f.filename for f in spec.files if not f.sha256]
    if unverified and not allow_unverified:
        raise ConfigError(
            f"dataset {spec.name}: no published sha256 for {', '.join(unverified)}; "
            "pass --allow-unverified (allow_unverified=True) to download them without a checksum"
        )
    folder.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for remote in spec.files:
        path = download(remote.url, _local_file(folder, remote), remote.sha256, size=remote.size, progress=progress)
        digest = remote.sha256 or sha256_file(path)
        hashes[remote.filename] = digest
        if remote.extract:
            done = folder / f"{EXTRACTED_PREFIX}{remote.filename}.json"
            if not _extraction_recorded(done, digest):
                files = safe_extract(path, folder)
                payload = {"archive": remote.filename, "sha256": digest, "files": len(files)}
                write_bytes_atomic(done, (json.dumps(payload, indent=1) + "\n").encode())
    payload = _marker_payload(spec, hashes)
    write_bytes_atomic(folder / COMPLETE_MARKER, (json.dumps(payload, indent=1) + "\n").encode())
    return folder


def _extraction_recorded(done: Path, digest: str) -> bool:
    try:
        return json.loads(done.read_text()).get("sha256") == digest
    except (OSError, ValueError, AttributeError):
        return False


# -- resolving a config entry to items ----------------------------------------------------------------
def _skimage_data_dir() -> Path:
    """scikit-image's bundled data folder, found without importing skimage.data (slow, lazy-loads)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ConfigError("dataset source 'samples' needs scikit-image (pip install scikit-image)")
    return Path(spec.origin).parent / "data"


def materialize_samples(dest: str | os.PathLike) -> Path:
    """Copy the bundled sample photos byte for byte into ``dest`` (no network); returns ``dest``."""
    dest = Path(dest)
    source_dir = _skimage_data_dir()
    for name in SAMPLE_FILES:
        src = source_dir / name
        if not src.is_file():
            raise ConfigError(f"{src}: bundled sample photo missing from the scikit-image install")
        target = dest / name
        if target.is_file() and target.stat().st_size == src.stat().st_size and sha256_file(target) == sha256_file(src):
            continue
        with atomic_path(target) as tmp:
            shutil.copy(src, tmp)  # bytes and permission bits (the temporary file starts as 0600)
    return dest


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _visible_files(root: Path, paths) -> list[str]:
    """Regular files under ``root`` as sorted POSIX relative paths, skipping hidden parts (.x)."""
    out = set()
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        try:
            rel = p.relative_to(root)
        except ValueError:  # a glob climbing out of its root with '..' after a wildcard
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        out.add(rel.as_posix())
    return sorted(out)


def _local_items(entry: Mapping[str, Any]) -> tuple[Path, list[str]]:
    raw = entry.get("path")
    if not raw:
        raise ConfigError("dataset source 'local' needs a 'path'")
    text = os.path.expanduser(str(raw))
    pattern = entry.get("pattern")
    if _has_glob(text):
        # A glob in 'path': the root is the folder above the first component with a wildcard.
        parts = Path(text).parts
        cut = next(i for i, part in enumerate(parts) if _has_glob(part))
        root = Path(os.path.abspath(Path(*parts[:cut]) if cut else "."))
        matches = globlib.glob(text, recursive=True)
        items = _visible_files(root, (Path(os.path.abspath(m)) for m in matches))
        if not items:
            raise ConfigError(f"local dataset: no files match {raw}")
        return root, items
    root = Path(os.path.abspath(text))
    if not root.exists():
        raise ConfigError(f"local dataset: {raw} does not exist")
    if not root.is_dir():
        raise ConfigError(f"local dataset: {raw} is not a folder")
    if pattern:
        if os.path.isabs(str(pattern)) or ".." in Path(str(pattern)).parts:
            raise ConfigError(f"local dataset: pattern {pattern} must stay inside {raw}")
        items = _visible_files(root, root.glob(str(pattern)))
        if not items:
            raise ConfigError(f"local dataset: no files match {pattern} under {raw}")
        return root, items
    items = [rel for rel in _visible_files(root, root.rglob("*")) if Path(rel).suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise ConfigError(f"local dataset: no images ({exts}) found under {raw}")
    return root, items


def resolve_items(source: Mapping[str, Any], base_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """(root folder, sorted item paths relative to it, POSIX) for one config dataset entry.

    ``{"source": "samples"}`` copies the bundled photos into ``base_dir/samples``;
    ``{"source": "local", "path": P}`` reads folder ``P`` recursively (image extensions only);
    with ``"pattern": G``, or a glob in ``P`` itself, the matching files are taken as they are.
    Relative paths are taken from the working directory. Any other source names a registry dataset
    that must already be fetched into ``base_dir/<name>``; its ``include`` globs select the items.
    Hidden files and folders (``.name``) are never items.
    """
    if not isinstance(source, Mapping) or "source" not in source:
        raise ConfigError(f"dataset entry {source!r}: needs a 'source' key")
    kind = str(source["source"])
    base = Path(base_dir)
    if kind == "samples":
        root = materialize_samples(base / "samples").resolve()
        return root, sorted(SAMPLE_FILES)
    if kind == "local":
        return _local_items(source)
    spec = _spec(kind)
    folder = base / spec.name
    if not (folder / COMPLETE_MARKER).is_file():
        raise ConfigError(
            f"dataset {spec.name}: not fetched into {folder}; run `ulbc datasets fetch {spec.name}` first"
        )
    root = folder.resolve()
    items = _visible_files(root, (p for pattern in spec.include for p in root.glob(pattern)))
    if not items:
        raise ConfigError(f"dataset {spec.name}: no files match {', '.join(spec.include)} under {root}")
    return root, items


def downscaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side at most ``max_side``, aspect ratio kept (rounded)."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscale_items(root: str | os.PathLike, items: list[str], max_side: int,
                    out_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """Write every item as an 8-bit RGB PNG no larger than ``max_side`` on its longer side
    (Lanczos) under ``out_dir``, keeping the relative paths (suffix ``.png``); returns the new
    (root, items). Images already small enough are written unscaled, so one folder holds them all."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from .imageio import load_rgb, save_png

    root, out = Path(root), Path(out_dir)
    targets: dict[str, str] = {}
    for rel in items:
        target = Path(rel).with_suffix(".png").as_posix()
        if target in targets:
            raise ConfigError(f"{root / rel} and {root / targets[target]} would both become {out / target}; rename one")
        targets[target] = rel

    def write(target: str) -> None:
        rgb = load_rgb(root / targets[target])
        size = downscaled_size(rgb.shape[1], rgb.shape[0], max_side)
        if size != (rgb.shape[1], rgb.shape[0]):
            rgb = np.asarray(Image.fromarray(rgb, "RGB").resize(size, Image.Resampling.LANCZOS))
        save_png(rgb, out / target)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(write, sorted(targets)))
    return out.resolve(), sorted(targets)
