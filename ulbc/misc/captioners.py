"""MISC's captioners: who writes the five-line answer for an image.

* ``table``: answers written beforehand (the way the authors ran GPT-4V: offline, into a CSV),
  read from a CSV with ``item`` and ``answer`` columns or a JSON object ``{item: answer}``. Every
  answer is parsed when the table is loaded, so a bad row fails before any image is coded. An item
  ``*`` answers for every item the table does not list (one fixed prompt for a whole dataset).
* ``transformers``: a local vision-language model (a zipped ``transformers`` model folder in the
  weights manager, :mod:`ulbc.misc.vlm`), greedy decoding.
* ``openai-compatible``: any chat-completions endpoint that takes images (OpenAI's, vLLM's,
  llama.cpp's server, ...): ``url`` is the API base (``.../v1``), ``model`` the model name, the key
  comes from the environment variable ``api_key_env`` (none sent when it is unset). The answer is
  stored in the file, so a decode never calls the model.

Every captioner returns an :class:`~ulbc.misc.answer.Answer` for ``(image, item)``, or fails with
one line naming the item.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, InputError
from .answer import Answer, parse_answer
from .stages import StageRegistry

#: The question, in the paper's five-line layout (the authors' own wording is not published).
PROMPT = (
    "Describe this image for someone who must redraw it. Answer in exactly five lines and nothing else:\n"
    "Line 1: the three most important objects, at most three words each, separated by commas, ending with a "
    "full stop.\n"
    "Lines 2 to 4: one sentence of about ten words about each of those objects, in the same order (appearance, "
    "colour, position).\n"
    "Line 5: about fifty words on the whole image: the scene, the relations between the objects, colours, "
    "lighting and style."
)
#: The table row that answers for items the table does not list.
DEFAULT_ITEM = "*"
#: Largest response body read from an endpoint (bytes).
MAX_RESPONSE_BYTES = 1 << 20

CAPTIONERS = StageRegistry("captioner")
register_captioner = CAPTIONERS.register


def get_captioner(name: str, **options: Any) -> "Captioner":
    return CAPTIONERS.lookup(name)(**options)


class Captioner(ABC):
    name: ClassVar[str]
    #: Option name -> (default, help); a value of None means required.
    option_help: ClassVar[dict[str, tuple[Any, str]]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.option_help)
        if unknown:
            raise ConfigError(f"captioner {self.name!r}: unknown option(s) {sorted(unknown)}; known: "
                              f"{sorted(self.option_help)}")
        self.options = {key: default for key, (default, _) in self.option_help.items()} | options
        missing = [key for key, value in self.options.items() if value is None]
        if missing:
            raise ConfigError(f"captioner {self.name!r}: needs {', '.join(missing)}")

    @abstractmethod
    def describe(self, image: np.ndarray, item: str) -> Answer:
        """The answer for ``image`` (H, W, 3 uint8), which the dataset calls ``item``."""


def item_keys(item: str) -> list[str]:
    """The names an item may have in a table: as given, then without folders and extension."""
    stem = Path(item).stem
    return list(dict.fromkeys([item, Path(item).name, stem]))


@register_captioner
class TableCaptioner(Captioner):
    name = "table"
    option_help = {"path": (None, "CSV (columns item, answer) or JSON object {item: answer}")}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(str(self.options["path"])).expanduser()
        self.answers = self._read()

    def _read(self) -> dict[str, Answer]:
        path = self.path
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the caption table ({' '.join(str(exc).split())})") from None
        rows: list[tuple[str, str, str]] = []  # (item, answer, where)
        if path.suffix.lower() == ".json":
            try:
                table = json.loads(content)
            except ValueError as exc:
                raise InputError(f"{path}: not JSON ({exc})") from None
            if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
                raise InputError(f"{path}: expected a JSON object {{item: five-line answer}}")
            rows = [(str(k), v, f"{path}: item {k}") for k, v in table.items()]
        else:
            reader = csv.DictReader(io.StringIO(content))
            if not reader.fieldnames or not {"item", "answer"} <= set(reader.fieldnames):
                raise InputError(f"{path}: a caption table needs the columns item and answer, got "
                                 f"{reader.fieldnames}")
            for number, row in enumerate(reader, 2):
                rows.append((str(row["item"] or "").strip(), str(row["answer"] or ""),
                             f"{path}: line {number} (item {row['item']})"))
        answers: dict[str, Answer] = {}
        for item, text, where in rows:
            if not item:
                raise InputError(f"{where}: the item name is empty")
            if item in answers:
                raise InputError(f"{where}: item {item} appears twice")
            answers[item] = parse_answer(text, where)
        return answers

    def describe(self, image: np.ndarray, item: str) -> Answer:
        for key in [*item_keys(item), DEFAULT_ITEM]:
            if key in self.answers:
                return self.answers[key]
        raise InputError(f"{item}: no answer in the caption table {self.path}")


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@register_captioner
class OpenAICompatibleCaptioner(Captioner):
    name = "openai-compatible"
    option_help = {
        "url": (None, "API base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1"),
        "model": (None, "the model name the endpoint serves"),
        "api_key_env": ("OPENAI_API_KEY", "environment variable holding the key (none sent when unset)"),
        "timeout": (120.0, "seconds to wait for an answer"),
        "max_tokens": (400, "longest answer"),
        "temperature": (0.0, "sampling temperature (0: the most likely answer)"),
        "prompt": (PROMPT, "the question asked with the image"),
    }

    def describe(self, image: np.ndarray, item: str) -> Answer:
        url = str(self.options["url"]).rstrip("/") + "/chat/completions"
        body = {
            "model": self.options["model"],
            "max_tokens": int(self.options["max_tokens"]),
            "temperature": float(self.options["temperature"]),
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": self.options["prompt"]},
                {"type": "image_url", "image_url": {"url": png_data_url(image)}},
            ]}],
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(str(self.options["api_key_env"]))
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=float(self.options["timeout"])) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace")
            raise InputError(f"{item}: captioner {url} answered HTTP {exc.code} ({' '.join(detail.split())})") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(f"{item}: captioner {url} is not reachable ({' '.join(str(reason).split())})") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise InputError(f"{item}: captioner {url} sent more than {MAX_RESPONSE_BYTES} bytes")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InputError(f"{item}: captioner {url} did not send a chat completion") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return parse_answer(content, f"{item} (answer of {self.options['model']} at {url})")


@register_captioner
class TransformersCaptioner(Captioner):
    name = "transformers"
    option_help = {
        "weights": (None, "weights-registry name of a zipped transformers vision-language model folder "
                          "(ulbc.misc.vlm)"),
        "max_new_tokens": (400, "longest answer (tokens)"),
        "prompt": (PROMPT, "the question asked with the image"),
        "device": ("auto", "where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:1, ..."),
    }

    def describe(self, image: np.ndarray, item: str) -> Answer:
        from ..provenance import resolve_device
        from .vlm import generate

        device = resolve_device(str(self.options["device"]), True)
        text = generate(str(self.options["weights"]), image, str(self.options["prompt"]),
                        max_new_tokens=int(self.options["max_new_tokens"]), device=device)
        return parse_answer(text, f"{item} (answer of {self.options['weights']})")
