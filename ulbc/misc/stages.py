"""The registries of MISC's plug-in stages (captioners, mappers, generators): name -> class."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


class StageRegistry(dict):
    """Classes of one kind of stage by their ``name``; :meth:`register` is the class decorator."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: Any) -> Any:
        if cls.name in self:
            raise ValueError(f"{self.kind} {cls.name!r} registered twice")
        self[cls.name] = cls
        return cls

    def lookup(self, name: str) -> Any:
        """The class registered as ``name``; a one-line ConfigError listing the known ones if none."""
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]
