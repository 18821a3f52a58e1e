"""Channel backends: :class:`MemoryBackend` for one process; more by dotted path."""

from __future__ import annotations

import importlib
from typing import Any

from ..options import Configurable
from .base import Backend, Listener, PublishResult, ReadResult
from .memory import MemoryBackend

BUILTIN = {
    "memory": "pushserver.backends.memory.MemoryBackend",
    "redis": "pushserver.backends.redis.RedisBackend",
}
#: The classes declaring the built-in stores' options, importable without any driver (see
#: :mod:`.redis_options`).
BUILTIN_OPTIONS = {
    "memory": "pushserver.backends.memory.MemoryBackend",
    "redis": "pushserver.backends.redis_options.RedisOptions",
}


def _attribute(path: str) -> Any:
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def backend_class(type_name: str) -> type[Backend]:
    """The class for a store ``type``: a built-in name or ``'package.module.Class'``."""
    path = BUILTIN.get(type_name, type_name)
    cls = _attribute(path)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{path} is not a pushserver.backends.base.Backend subclass")
    return cls


def options_class(type_name: str) -> type[Configurable]:
    """The class that declares and checks the options of a store ``type``: the backend
    class itself, or for a built-in one a class that needs no driver. Raises as
    :func:`backend_class` does for a dotted path that names no backend."""
    if type_name in BUILTIN_OPTIONS:
        return _attribute(BUILTIN_OPTIONS[type_name])
    return backend_class(type_name)


def create_backend(type_name: str, options: dict[str, Any]) -> Backend:
    return backend_class(type_name)(**options)


__all__ = [
    "Backend",
    "Listener",
    "MemoryBackend",
    "PublishResult",
    "ReadResult",
    "backend_class",
    "create_backend",
    "options_class",
]
