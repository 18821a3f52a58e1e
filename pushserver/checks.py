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
    messages.extend(_check_authorization())
    return messages


def _secret_key(settings: Any) -> str | bytes | None:
    from django.core.exceptions import ImproperlyConfigured

    try:
        return settings.SECRET_KEY
    except ImproperlyConfigured:  # empty: Django refuses to hand it out
        return None


def _check_authorization() -> list[checks.CheckMessage]:
    """The ``can_subscribe`` hooks import and are callable; signing has a key."""
    from django.conf import settings

    from .authorize import load_hook
    from .settings import get_config

    messages: list[checks.CheckMessage] = []
    for location in get_config().locations:
        key = f"PUSH_SERVER['locations'][{location.index}]"
        if location.can_subscribe is not None:
            try:
                load_hook(location.can_subscribe)
            except ImportError as exc:
                messages.append(
                    checks.Error(
                        f"{key}['can_subscribe']: {location.can_subscribe!r} cannot be "
                        f"imported ({exc})",
                        hint="Check the dotted path (module.function) and that the module "
                        "imports without errors.",
                        id="pushserver.E065",
                    )
                )
            except TypeError as exc:
                messages.append(
                    checks.Error(
                        f"{key}['can_subscribe']: {exc}",
                        hint="Name a function can_subscribe(request, channel_id) (sync or "
                        "async) returning True to allow.",
                        id="pushserver.E066",
                    )
                )
            except Exception as exc:  # the module itself fails on import
                messages.append(
                    checks.Error(
                        f"{key}['can_subscribe']: importing {location.can_subscribe!r} "
                        f"failed ({exc!r})",
                        hint="Fix the error in that module.",
                        id="pushserver.E065",
                    )
                )
        if location.signed and not _secret_key(settings):
            messages.append(
                checks.Error(
                    f"{key}['signed']: signed channel URLs need Django's SECRET_KEY, which "
                    "is empty",
                    hint="Set SECRET_KEY (the same in the Django site and the push server), "
                    "or remove 'signed'.",
                    id="pushserver.E067",
                )
            )
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
                "Install redis-py: pip install 'redis>=5' (the [redis] extra)."
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

#: The tag of the checks that touch the network. They are deployment checks, so that
#: ``migrate``, ``shell`` or ``check`` never connect anywhere; ``check --deploy`` runs them,
#: and ``runpushserver`` asks for them by this tag.
NETWORK_TAG = "pushserver_network"


@checks.register("pushserver", NETWORK_TAG, deploy=True)
def check_redis_reachable(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A warning (not an error: Redis may come up after the push server, which reconnects)
    for each redis store that does not answer a PING, at ``runpushserver`` startup and on
    ``check --deploy``."""
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
    #: Per address: why the PING failed (None: it answered), and whether the store's
    #: 'cluster' option contradicts the server.
    pinged: dict[str, tuple[str | None, bool]] = {}
    for store in stores:
        try:
            cls = backend_class(store.type)
            if not issubclass(cls, RedisBackend):
                continue
            backend = cls(**store.options)
        except Exception:  # reported by the other checks (E016, E017)
            continue
        if backend.address not in pinged:
            reason = backend.ping(REDIS_CHECK_TIMEOUT)
            pinged[backend.address] = reason, backend.misconfigured
        reason, misconfigured = pinged[backend.address]
        if reason is not None and misconfigured:
            messages.append(
                checks.Warning(
                    f"PUSH_SERVER['store'] {store.name!r}: Redis at {backend.address}: {reason}",
                    hint="Set the store's 'cluster' to match the server: True for a Redis "
                    "Cluster (any node's address will do), False for one Redis. Until then "
                    "commands fail (MOVED or 'cluster support disabled') and publishing gets "
                    "503.",
                    id="pushserver.W053",
                )
            )
        elif reason is not None:
            messages.append(
                checks.Warning(
                    f"PUSH_SERVER['store'] {store.name!r}: cannot reach Redis at "
                    f"{backend.address} ({reason})",
                    hint="Start Redis or fix the store's host, port, url, password or "
                    "sentinels. The "
                    "push server starts anyway and connects once Redis answers; until then "
                    "publishing fails with 503.",
                    id="pushserver.W052",
                )
            )
    return messages


# -- first use: what send_update and {% channel_url %} need (issue 12) -------------------------


@checks.register("pushserver")
def check_first_use(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warnings (W120-W124) for settings that are valid but make ``send_update`` or
    ``{% channel_url %}`` fail the first time they are used in this process: no location
    to build the URL from, or no host. The host conditions are the ones
    :mod:`pushserver.utils.updates` itself applies, so inside ``runpushserver`` (which
    knows its own address) they do not fire. Skipped while ``PUSH_SERVER`` has errors:
    those come first."""
    from .settings import get_config, get_problems
    from .utils import updates

    if any(problem.level == "error" for problem in get_problems()):
        return []
    config = get_config()
    messages: list[checks.CheckMessage] = []

    def missing_host(kind: str) -> bool:
        host = config.publisher_host if kind == "publisher" else config.subscriber_host
        try:
            updates._host(config, host, f"{kind}_host")
        except ValueError:
            return True
        return False

    if config.first("publisher") is None:
        if config.publish_via == "http":  # with 'backend' it is E051 already
            messages.append(
                checks.Warning(
                    "PUSH_SERVER['locations']: there is no publisher location, so "
                    "send_update() has nowhere to publish and raises ValueError",
                    hint="Add {'type': 'publisher', 'prefix': '/publisher/'} to 'locations' "
                    "(or silence pushserver.W120 if this project never publishes).",
                    id="pushserver.W120",
                )
            )
    elif config.publish_via == "http" and missing_host("publisher"):
        messages.append(
            checks.Warning(
                "PUSH_SERVER['publisher_host']: not set, so send_update() outside "
                "runpushserver (runserver, a worker, ./manage.py shell) raises ValueError: "
                "it does not know where the push server is",
                hint="Set 'publisher_host': {'location': '127.0.0.1:8001', 'secure': False}, "
                "the address runpushserver listens on (or 'publish_via': 'backend' with a "
                "redis store).",
                id="pushserver.W121",
            )
        )
    for kind, user in (("publisher", "send_update()"), ("subscriber", "{% channel_url %}")):
        location = config.first(kind)
        if location is None or location.url is None:
            continue
        try:
            updates._reversed(location.url, location.index)
        except ValueError:
            messages.append(
                checks.Warning(
                    f"PUSH_SERVER['locations'][{location.index}]['url']: {location.url!r} "
                    f"cannot be reversed into a URL, so {user} raises ValueError (it builds "
                    f"URLs from the first {kind} location)",
                    hint="Use one path with the channel id's group and no alternation or "
                    "optional part outside it, e.g. r'/updates/([^/]+)', or a 'prefix'.",
                    id="pushserver.W124",
                )
            )
    if config.first("subscriber") is None:
        messages.append(
            checks.Warning(
                "PUSH_SERVER['locations']: there is no subscriber location, so "
                "{% channel_url %} fails (a 500 on the page) and browsers have nowhere to "
                "subscribe",
                hint="Add {'type': 'subscriber', 'prefix': '/subscriber/'} to 'locations' "
                "(or silence pushserver.W122 if no page subscribes).",
                id="pushserver.W122",
            )
        )
    elif missing_host("subscriber"):
        messages.append(
            checks.Warning(
                "PUSH_SERVER['subscriber_host']: not set, so {% channel_url %} outside "
                "runpushserver raises ValueError (a 500 on the page): it does not know where "
                "browsers reach the push server",
                hint="Set 'subscriber_host': {'location': '127.0.0.1:8001', 'secure': False} "
                "in development, the public host (e.g. {'location': 'push.example.com', "
                "'secure': True}) in production.",
                id="pushserver.W123",
            )
        )
    return messages
