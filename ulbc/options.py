"""Declared options: what a codec, metric or pipeline stage accepts, each value checked against it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


def format_rate(value: float) -> str:
    """Stable short text for a rate value: 5 -> '5', 0.5 -> '0.5', 1e-3 -> '0.001'."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


#: Kinds of option value an :class:`Option` can declare.
OPTION_KINDS = ("int", "float", "bool", "str", "choice", "ints", "floats", "mapping")
_LIST_KINDS = {"ints": "int", "floats": "float"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bound_text(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{format_rate(low)}, {format_rate(high)}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {format_rate(low)}"
    if high is not None:
        return f" <= {format_rate(high)}"
    return ""


@dataclass(frozen=True)
class Option:
    """One encoder option: its default, the values it accepts and what it does.

    ``kind`` is one of :data:`OPTION_KINDS`: ``int`` (bool is not an int), ``float`` (any finite
    number), ``bool``, ``str``, ``choice`` (one of ``choices``, same type: 1.0 is not the choice 1),
    or ``ints`` / ``floats`` (a list whose entries each meet ``low``/``high`` and whose length is in
    ``length``), or ``mapping`` (option names to values, for a stage's own options: the stage
    checks them). ``keywords`` are words accepted besides the kind, such as ``"auto"``.
    """

    default: Any
    kind: str
    low: float | None = None
    high: float | None = None
    #: ``low`` itself is refused (an open interval at the bottom, such as a learning rate > 0).
    low_open: bool = False
    choices: tuple = ()
    keywords: tuple[str, ...] = ()
    #: Lists only: (fewest, most) entries.
    length: tuple[int, int] | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OPTION_KINDS:
            raise ValueError(f"option kind {self.kind!r} is not one of {OPTION_KINDS}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError("an option has choices exactly when its kind is 'choice'")

    def _scalar_ok(self, value: Any, kind: str) -> bool:
        if kind == "int":
            ok = _is_int(value)
        elif kind == "float":
            ok = _is_number(value)
        elif kind == "bool":
            return isinstance(value, bool)
        elif kind == "str":
            return isinstance(value, str)
        elif kind == "mapping":
            return isinstance(value, dict) and all(isinstance(key, str) for key in value)
        else:  # choice
            return any(value == c and type(value) is type(c) for c in self.choices)
        if not ok:
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def normalise(self, value: Any) -> Any:
        """YAML 1.1 reads ``1e-3`` (no dot) as text: numeric text becomes a number for float kinds."""
        if self.kind == "float" and isinstance(value, str) and value not in self.keywords:
            return _numeric_text(value)
        if self.kind == "floats" and isinstance(value, (list, tuple)):
            return [_numeric_text(v) if isinstance(v, str) else v for v in value]
        return value

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str) and value in self.keywords:
            return True
        if self.kind in _LIST_KINDS:
            if not isinstance(value, (list, tuple)):
                return False
            fewest, most = self.length or (0, None)
            if len(value) < fewest or (most is not None and len(value) > most):
                return False
            return all(self._scalar_ok(v, _LIST_KINDS[self.kind]) for v in value)
        return self._scalar_ok(value, self.kind)

    def requirement(self) -> str:
        """What the option accepts, as the end of "must be ...": 'an integer in [0, 6]'."""
        bounds = _bound_text(self.low, self.high, self.low_open)
        if self.kind == "int":
            text = f"an integer{bounds}"
        elif self.kind == "float":
            text = f"a number{bounds}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a string"
        elif self.kind == "choice":
            text = f"one of {', '.join(str(c) for c in self.choices)}"
        elif self.kind == "mapping":
            text = "a mapping of option names to values"
        else:
            fewest, most = self.length or (0, None)
            if most is None:
                count = f"{fewest} or more" if fewest else "any number of"
            else:
                count = str(fewest) if fewest == most else f"{fewest} to {most}"
            text = f"a list of {count} {'integers' if self.kind == 'ints' else 'numbers'}{bounds}"
        if self.keywords:
            text += f" or {' or '.join(repr(k) for k in self.keywords)}"
        return text


def _numeric_text(text: str) -> Any:
    """``float(text)`` when the text is a plain finite number ('1e-3'), else the text unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_options(owner: str, specs: dict[str, Option], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``specs`` and completed with the defaults; one-line ConfigError."""
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise ConfigError(f"{owner}: unknown option(s) {unknown}; known: {sorted(specs) or 'none'}")
    checked = {key: specs[key].normalise(value) for key, value in options.items()}
    for key, value in checked.items():
        if not specs[key].accepts(value):
            raise ConfigError(f"{owner}: option {key} must be {specs[key].requirement()}, got {_short_repr(value)}")
    return {**{key: spec.default for key, spec in specs.items()}, **checked}
