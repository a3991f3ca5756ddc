"""Bookkeeping shared by ulbc's trainers (``ulbc train adapter``, ``ulbc train glc``): the JSON-lines
step log, the RNG state a checkpoint carries for exact resumption, and the resumption checks.
Torch only; no model code, so importing it loads no codec library."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from .errors import ConfigError, InputError
from .fsutil import write_bytes_atomic
from .statedict import one_line


@dataclass
class TrainResult:
    """What a training run left: its checkpoint, its log, the steps done in all, the last step's record."""

    checkpoint: Path
    log: Path
    steps_done: int
    last: dict[str, float]


def as_float(number) -> float:
    """A loss term as a float (tensors detached)."""
    return float(number.detach()) if torch.is_tensor(number) else float(number)


def rng_state(device: str) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: str, path: Path, what: str) -> None:
    """Restore :func:`rng_state`; a one-line InputError naming ``what`` (the checkpoint's kind)."""
    try:
        torch.set_rng_state(state["torch"])
        if device.startswith("cuda"):
            if "cuda" not in state:
                raise KeyError("cuda")
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"{path}: damaged {what} checkpoint (RNG state: {one_line(exc)}; a CPU run resumes on "
                         f"the CPU, a GPU run on a GPU)") from None


def check_resumable(header: dict, wanted: dict, keys: tuple[str, ...], path: Path) -> None:
    """A resumed run must share ``keys`` of its settings with the checkpoint's header."""
    for key in keys:
        if header.get(key) != wanted[key]:
            raise ConfigError(f"{path}: cannot resume: its {key} is {json.dumps(header.get(key), sort_keys=True)}, "
                              f"this run's is {json.dumps(wanted[key], sort_keys=True)}")


def truncate_log(log: Path, steps_done: int, what: str) -> None:
    """Keep the log lines of the steps the checkpoint holds (a run killed between two checkpoints
    logged steps that the resumed run does again)."""
    if not log.is_file():
        return
    kept = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{log}: not a JSON-lines {what} training log (line {number})") from None
        if step <= steps_done:
            kept.append(line)
    write_bytes_atomic(log, "".join(line + "\n" for line in kept).encode())


def log_step(log_file: IO[str], record: dict, what: str, out: Path) -> None:
    """Append one step's record; a non-finite term stops the training with a one-line error."""
    if not all(math.isfinite(v) for v in record.values()):
        raise ConfigError(f"{what} training diverged at step {record['step']} ({json.dumps(record)}); "
                          f"lower --lr or the λ values, or resume from {out}")
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
