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
