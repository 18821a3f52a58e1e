"""Exceptions raised by the pushserver core.

Hierarchy::

    PushServerError
    ├── ChannelNotFound        the channel does not exist (HTTP 404)
    ├── BackendUnavailable     the backend cannot store or deliver right now (HTTP 503)
    │   └── StoreFull          the store is at a budget (memory_limit, max_channels,
    │                          Redis maxmemory): nothing was stored (HTTP 507)
    └── ConfigurationError     PUSH_SERVER is invalid (a system check error in Django)
"""


class PushServerError(Exception):
    """Root of every exception the pushserver core raises."""


class ChannelNotFound(PushServerError):
    """The channel does not exist and was not to be created."""

    def __init__(self, channel_id: str) -> None:
        super().__init__(f"channel {channel_id!r} does not exist")
        self.channel_id = channel_id


class BackendUnavailable(PushServerError):
    """The backend could not complete the operation; nothing was stored."""


class StoreFull(BackendUnavailable):
    """The store is at one of its budgets; nothing was stored and nothing it already held
    was dropped to make room. ``limit`` names the budget: ``'memory_limit'``,
    ``'max_channels'`` or ``'maxmemory'`` (Redis's own). It is a
    :class:`BackendUnavailable`, so code that handles that one keeps working; publishers
    get ``507 Insufficient Storage``."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(f"the channel store is full ({limit}): {detail}")
        self.limit = limit


class ConfigurationError(PushServerError):
    """The configuration is invalid; ``problems`` lists what and how to fix it."""

    def __init__(self, problems: list) -> None:  # list[config.Problem]
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
