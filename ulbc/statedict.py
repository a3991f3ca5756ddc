"""Reading PyTorch state dicts that ulbc did not write: plain tensors only, layout checked first.

Every failure is one InputError line naming the file; nothing is loaded into a network before the
keys and shapes matched.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping


def one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shape_text(tensor) -> str:
    return "x".join(str(n) for n in tensor.shape) or "scalar"


def read_tensors(path: str | Path, what: str, *, unwrap: str | None = None) -> dict:
    """The mapping of names to tensors saved at ``path`` (``torch.load(weights_only=True)``).
    ``unwrap``: a key under which training scripts nest the state dict (``"model"``)."""
    import torch

    from .errors import InputError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled module or other objects, not plain tensors
        raise InputError(f"{path}: not {what} (not a torch.save file of plain tensors)") from None
    except Exception as exc:  # torch reports unreadable files through many exception types
        raise InputError(f"{path}: not {what} ({one_line(exc)})") from None
    if unwrap is not None and isinstance(state, dict) and isinstance(state.get(unwrap), dict):
        state = state[unwrap]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: not {what} (expected a mapping of names to tensors)")
    return state


def check_layout(path: str | Path, what: str, given: Mapping, expected: Mapping) -> None:
    """``given`` (tensors read from ``path``) must have exactly the keys and shapes of ``expected``."""
    from .errors import InputError

    missing = [key for key in expected if key not in given]
    extra = [key for key in given if key not in expected]
    if missing or extra:
        parts = [f"{label} {keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
                 for label, keys in (("missing", missing), ("unexpected", extra)) if keys]
        raise InputError(f"{path}: not {what} ({'; '.join(parts)})")
    for key, target in expected.items():
        if tuple(given[key].shape) != tuple(target.shape):
            raise InputError(f"{path}: not {what} ({key} is {shape_text(given[key])}, expected {shape_text(target)})")
