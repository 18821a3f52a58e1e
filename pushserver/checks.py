"""System checks: every ``PUSH_SERVER`` problem reported at startup, naming key and fix."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .settings import get_problems


@checks.register("pushserver")
def check_push_server_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for problem in get_problems():
        cls = checks.Error if problem.level == "error" else checks.Warning
        messages.append(cls(f"{problem.key}: {problem.message}", hint=problem.hint, id=problem.id))
    messages.extend(_check_backends())
    return messages


def _check_backends() -> list[checks.CheckMessage]:
    from .backends import backend_class
    from .settings import get_config

    messages: list[checks.CheckMessage] = []
    for store in get_config().stores.values():
        try:
            backend_class(store.type)
        except ImportError as exc:
            hint = (
                "Install the extra: pip install 'django-pushserver[redis]'."
                if store.type == "redis"
                else "Check the dotted path and that the package is installed."
            )
            messages.append(
                checks.Error(
                    f"PUSH_SERVER['store'] {store.name!r}: backend {store.type!r} "
                    f"cannot be imported ({exc})",
                    hint=hint,
                    id="pushserver.E016",
                )
            )
        except (AttributeError, TypeError, ValueError) as exc:
            messages.append(
                checks.Error(
                    f"PUSH_SERVER['store'] {store.name!r}: {store.type!r} is not a backend ({exc})",
                    hint="Name a pushserver.backends.base.Backend subclass.",
                    id="pushserver.E017",
                )
            )
    return messages


#: Seconds the startup check waits for each Redis: a warning must not hold up startup.
REDIS_CHECK_TIMEOUT = 1.0


@checks.register("pushserver")
def check_redis_reachable(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A warning (not an error: Redis may come up after the push server, which reconnects)
    for each redis store that does not answer a PING at startup."""
    from .backends import backend_class
    from .settings import get_config

    stores = [s for s in get_config().stores.values() if s.type == "redis" or "." in s.type]
    if not stores:
        return []  # no redis-py import for memory stores
    try:
        from .backends.redis import RedisBackend
    except ImportError:
        return []  # pushserver.E016 says so
    messages: list[checks.CheckMessage] = []
    pinged: dict[str, str | None] = {}
    for store in stores:
        try:
            cls = backend_class(store.type)
            if not issubclass(cls, RedisBackend):
                continue
            backend = cls(**store.options)
        except Exception:  # reported by the other checks (E016, E017)
            continue
        if backend.address not in pinged:
            pinged[backend.address] = backend.ping(REDIS_CHECK_TIMEOUT)
        reason = pinged[backend.address]
        if reason is not None:
            messages.append(
                checks.Warning(
                    f"PUSH_SERVER['store'] {store.name!r}: cannot reach Redis at "
                    f"{backend.address} ({reason})",
                    hint="Start Redis or fix the store's host, port, url or password. The "
                    "push server starts anyway and connects once Redis answers; until then "
                    "publishing fails with 503.",
                    id="pushserver.W052",
                )
            )
    return messages
