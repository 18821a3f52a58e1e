"""``PUSH_SERVER`` read from Django settings: parsed once, cached, reset on change.

``override_settings(PUSH_SERVER=...)`` works in tests because the cache listens to
``setting_changed``.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import config as _config


@lru_cache(maxsize=1)
def _parsed() -> tuple[_config.ServerConfig, list[_config.Problem]]:
    return _config.parse(getattr(settings, "PUSH_SERVER", None))


def get_config() -> _config.ServerConfig:
    """The parsed configuration (problems are reported by the system checks)."""
    return _parsed()[0]


def get_problems() -> list[_config.Problem]:
    return _parsed()[1]


def ignore_errors() -> bool:
    return bool(getattr(settings, "PUSH_SERVER_IGNORE_ERRORS", False))


@receiver(setting_changed)
def _reset(setting: str, **kwargs: object) -> None:
    if setting in ("PUSH_SERVER", "PUSH_SERVER_IGNORE_ERRORS"):
        _parsed.cache_clear()
