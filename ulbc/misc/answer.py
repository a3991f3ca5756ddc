"""The LMM's answer in MISC's five-line format.

The question asks for, one per line:

1. three object names, comma-separated, ending with a full stop: ``Dog, Red ball, Garden bench.``
2. to 4. one sentence about each object, in the order of line 1;
5. a description of the whole image.

Blank lines and surrounding spaces are ignored; a numbering such as ``1.``, ``2)`` or ``Line 3:`` in
front of a line is dropped (models add them though asked not to). Anything else that does not fit
is an error that names the item and the line, never a silently wrong caption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError

#: Objects an answer names (the paper's three).
OBJECTS = 3
#: Longest line kept (characters): a model that rambles is refused, not truncated.
MAX_LINE_CHARS = 2000
#: Longest object name (words), as the question asks (≤ 3 words each).
MAX_NAME_WORDS = 3
_NUMBERING = re.compile(r"^\s*(?:(?:line|item)\s*)?\(?[1-5][.):]\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """One image's description: the object names, a sentence per object, the overall text."""

    objects: tuple[str, ...]
    details: tuple[str, ...]
    overall: str

    def lines(self) -> list[str]:
        """The five-line form (names joined with ', ' and a final full stop)."""
        return [", ".join(self.objects) + ".", *self.details, self.overall]

    def text(self) -> str:
        return "\n".join(self.lines()) + "\n"


def _clean(line: str) -> str:
    return _NUMBERING.sub("", line.strip(), count=1).strip()


def parse_answer(text: str, where: str) -> Answer:
    """The :class:`Answer` in ``text``; InputError (one line, naming ``where``) when it is not one."""
    if not isinstance(text, str):
        raise InputError(f"{where}: the answer is not text ({type(text).__name__})")
    lines = [_clean(line) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if len(lines) != OBJECTS + 2:
        raise InputError(f"{where}: the answer has {len(lines)} non-empty line(s), expected {OBJECTS + 2} (object "
                         f"names, {OBJECTS} details, an overall description)")
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise InputError(f"{where}: line {number} of the answer has {len(line)} characters (at most "
                             f"{MAX_LINE_CHARS})")
        if not line.isprintable():
            raise InputError(f"{where}: line {number} of the answer has non-printable characters")
    names = [name.strip() for name in lines[0].rstrip(".").split(",")]
    if len(names) != OBJECTS or not all(names):
        raise InputError(f"{where}: line 1 of the answer should name {OBJECTS} objects separated by commas, got "
                         f"{lines[0]!r}")
    for name in names:
        if len(name.split()) > MAX_NAME_WORDS:
            raise InputError(f"{where}: object name {name!r} has more than {MAX_NAME_WORDS} words")
    if len({name.lower() for name in names}) != OBJECTS:
        raise InputError(f"{where}: line 1 of the answer names an object twice ({lines[0]!r})")
    return Answer(tuple(names), tuple(lines[1 : 1 + OBJECTS]), lines[OBJECTS + 1])
