"""Shared fixtures: small real image crops (from ../shared/data when present) or bundled samples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ULBC_SHARED", REPO.parent / "shared"))
KODAK = SHARED / "data" / "kodak"


def skimage_photo(name: str = "astronaut.png") -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    return Path(spec.origin).parent / "data" / name


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real 96x128 RGB photo crop (Kodak if available, else scikit-image's astronaut)."""
    from ulbc.imageio import load_rgb

    src = KODAK / "kodim23.png" if (KODAK / "kodim23.png").is_file() else skimage_photo()
    image = load_rgb(src)
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[h // 2 - 48 : h // 2 + 48, w // 2 - 64 : w // 2 + 64])


@pytest.fixture(scope="session")
def photo_large() -> np.ndarray:
    """A 192x256 crop: big enough for MS-SSIM (needs > 160 px on each side)."""
    from ulbc.imageio import load_rgb

    image = load_rgb(skimage_photo())
    return np.ascontiguousarray(image[100:292, 100:356])


#: Small budgets that keep the overfitted codecs fast enough for tests (quality is not the point).
QUICK_OPTIONS = {
    "coolchic": {"iterations": 150, "candidates": 1, "final_iterations": 30, "n_grids": 5, "arm_context": 8,
                 "preset": "lop", "progress": False},
    "lottery": {"iterations": 150, "candidates": 1, "final_iterations": 30, "n_grids": 5, "arm_context": 8,
                "progress": False},
    "nerv": {"iterations": 400, "finetune_iterations": 20, "pe_levels": 8, "progress": False},
    "supermask-nerv": {"iterations": 400, "finetune_iterations": 20, "pe_levels": 8, "progress": False},
}


#: The five-line answer misc's caption table gives every item in the generic tests.
MISC_ANSWER = ("Bird, Branch, Sky.\nA small bird with brown wings.\nA bare branch across the frame.\n"
               "A pale blue sky behind.\nA small bird sits on a bare branch against a pale blue sky.")


#: CompressAI codecs -> their architecture (the ``compressai`` codec: the one its quick options name).
COMPRESSAI_CODECS = {name: name for name in ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean",
                                             "mbt2018", "cheng2020-anchor", "cheng2020-attn")}
COMPRESSAI_CODECS["compressai"] = "bmshj2018-factorized-relu"
#: The <base>+adapter codecs -> their architecture.
ADAPTER_CODECS = {f"{arch}+adapter": arch for arch in ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean",
                                                       "mbt2018", "cheng2020-anchor", "cheng2020-attn")}
COMPRESSAI_CODECS.update(ADAPTER_CODECS)
_STANDIN_FOLDER: list[Path] = []


#: Learned codecs that run random stand-in weights in tests (no RD order between their rate points).
STANDIN_CODECS = (*COMPRESSAI_CODECS, "glc")


def _standin_folder() -> Path:
    import tempfile

    if not _STANDIN_FOLDER:
        import atexit

        _STANDIN_FOLDER.append(Path(tempfile.mkdtemp(prefix="ulbc-standins-")))
        atexit.register(shutil.rmtree, _STANDIN_FOLDER[0], True)
    return _STANDIN_FOLDER[0]


def quick_options(name: str) -> dict:
    """Options that make codec ``name`` fast in tests: small budgets for the trained codecs, and
    tiny random stand-in checkpoints (tests/standin_weights.py) for the learned ones (no zoo or
    GLC weights here)."""
    if name == "glc":
        from standin_weights import write_glc_standin

        path = _standin_folder() / "glc-tiny-standin.pth"
        if not path.is_file():
            write_glc_standin(path)
        return {"config": "glc-tiny", "checkpoint": str(path)}
    if name == "misc":  # one answer for every item (the table's "*" row), the rest at its defaults
        path = _standin_folder() / "misc-answers.json"
        if not path.is_file():
            path.write_text(json.dumps({"*": MISC_ANSWER}))
        return {"captioner_options": {"path": str(path)}}
    if name not in COMPRESSAI_CODECS:
        return dict(QUICK_OPTIONS.get(name, {}))
    from standin_weights import write_compressai_standins
    from ulbc.codecs import CODECS

    _standin_folder()
    architecture = COMPRESSAI_CODECS[name]
    low, high = (int(v) for v in CODECS[name].rate_range)
    qualities = range(low, min(high, 8) + 1)
    pattern, _ = write_compressai_standins(_STANDIN_FOLDER[0], architecture, qualities)
    if name in ADAPTER_CODECS:
        from standin_weights import write_adapter_standins

        return {"checkpoint": pattern, "adapter": write_adapter_standins(_STANDIN_FOLDER[0], architecture, qualities)}
    return {"checkpoint": pattern, **({"arch": architecture} if name == "compressai" else {})}


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="tests/test_fuzz.py: many more hostile-bitstream cases per codec")


def pytest_terminal_summary(terminalreporter):
    import sys

    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and getattr(fuzz, "FUZZ_COUNTS", None):
        terminalreporter.write_sep("-", "hostile bitstreams per codec (tests/test_fuzz.py)")
        for line in fuzz.format_table(fuzz.FUZZ_COUNTS):
            terminalreporter.write_line(line)
