"""A local vision-language model as MISC's captioner, through ``transformers``.

The model is a whole ``transformers`` model folder (``config.json``, the weights, the processor's and
tokenizer's files, a chat template), zipped into one archive and registered in the weights manager
(a site-registry entry with its sha256, then ``ulbc weights import model.zip --name <entry>``). ulbc
unpacks it once, next to the archive, into a folder named after the archive's sha256, and loads it
with ``AutoModelForImageTextToText`` and ``AutoProcessor`` from that folder only (no hub access).
Decoding is greedy, so one model gives one answer per image.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .. import weights
from ..errors import InputError
from ..statedict import one_line

#: Largest unpacked model folder (bytes): bigger than any local VLM worth running for captions.
MAX_UNPACKED_BYTES = 64 << 30
#: Most members of a model archive.
MAX_MEMBERS = 10_000


def unpacked_folder(name: str) -> Path:
    """The model folder of the zipped weights entry ``name``, unpacked once (atomically) beside it."""
    archive = weights.require(name)
    digest = weights.file_sha256(name)
    folder = archive.with_name(f"{archive.name}.{digest[:16]}.d")
    if folder.is_dir():
        return folder
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_MEMBERS:
                raise InputError(f"{archive}: {len(members)} members (at most {MAX_MEMBERS})")
            total = sum(member.file_size for member in members)
            if total > MAX_UNPACKED_BYTES:
                raise InputError(f"{archive}: unpacks to {total} bytes (at most {MAX_UNPACKED_BYTES})")
            for member in members:
                path = PurePosixPath(member.filename)
                if path.is_absolute() or ".." in path.parts or "\\" in member.filename:
                    raise InputError(f"{archive}: member {member.filename!r} points outside the folder")
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InputError(f"{archive}: member {member.filename!r} is a symbolic link")
            # A single top-level folder (a zipped model folder) is the model folder itself.
            tops = {PurePosixPath(m.filename).parts[0] for m in members if m.filename.strip("/")}
            strip = len(tops) == 1 and all("/" in m.filename for m in members)
            temporary = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=archive.parent))
            try:
                bundle.extractall(temporary)
                root = temporary / next(iter(tops)) if strip else temporary
                if not (root / "config.json").is_file():
                    raise InputError(f"{archive}: not a transformers model folder (no config.json)")
                root.rename(folder)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{archive}: not a zip archive of a model folder ({one_line(exc)})") from None
    except OSError as exc:
        if folder.is_dir():  # another process unpacked it first
            return folder
        raise InputError(f"{archive}: cannot be unpacked ({one_line(exc)})") from None
    return folder


_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}


def load(name: str, device: str) -> tuple[Any, Any]:
    """(processor, model) of the weights entry ``name`` on ``device``."""
    key = (weights.file_sha256(name), device)
    if key not in _LOADED:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = unpacked_folder(name)
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{folder}: not a vision-language model transformers can load ({one_line(exc)})") \
                from None
        _LOADED.clear()
        _LOADED[key] = (processor, model.to(device).eval())
    return _LOADED[key]


def generate(name: str, image: np.ndarray, prompt: str, *, max_new_tokens: int, device: str) -> str:
    """The model's greedy answer to ``prompt`` about ``image``."""
    import torch
    from PIL import Image

    processor, model = load(name, device)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=text, images=[Image.fromarray(np.ascontiguousarray(image))], return_tensors="pt")
    inputs = {key: value.to(device) for key, value in inputs.items()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
