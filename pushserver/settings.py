"""``PUSH_SERVER`` read from Django settings: parsed once, cached, reset on change.

``override_settings(PUSH_SERVER=...)`` works in tests because the cache listens to
``setting_changed``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import config as _config


@lru_cache(maxsize=1)
def _parsed() -> tuple[_config.ServerConfig, list[_config.Problem]]:
    config, problems = _config.parse(getattr(settings, "PUSH_SERVER", None))
    # The core never imports Django: INTERNAL_IPS (allowed to publish by default) goes in here.
    internal_ips = getattr(settings, "INTERNAL_IPS", ())
    if isinstance(internal_ips, list | tuple):
        config = replace(config, internal_ips=tuple(str(ip) for ip in internal_ips))
    return config, problems


def get_config() -> _config.ServerConfig:
    """The parsed configuration (problems are reported by the system checks)."""
    return _parsed()[0]


def get_problems() -> list[_config.Problem]:
    return _parsed()[1]


def ignore_errors() -> bool:
    return bool(getattr(settings, "PUSH_SERVER_IGNORE_ERRORS", False))


@receiver(setting_changed)
def _reset(setting: str, **kwargs: object) -> None:
    if setting in ("PUSH_SERVER", "PUSH_SERVER_IGNORE_ERRORS", "INTERNAL_IPS"):
        _parsed.cache_clear()
