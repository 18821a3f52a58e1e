"""Channel backends: :class:`MemoryBackend` for one process; more by dotted path."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Backend, Listener, PublishResult, ReadResult
from .memory import MemoryBackend

BUILTIN = {
    "memory": "pushserver.backends.memory.MemoryBackend",
    "redis": "pushserver.backends.redis.RedisBackend",
}


def backend_class(type_name: str) -> type[Backend]:
    """The class for a store ``type``: a built-in name or ``'package.module.Class'``."""
    path = BUILTIN.get(type_name, type_name)
    module_name, _, class_name = path.rpartition(".")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{path} is not a pushserver.backends.base.Backend subclass")
    return cls


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
]
