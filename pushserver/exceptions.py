"""Exceptions raised by the pushserver core.

Hierarchy::

    PushServerError
    ├── ChannelNotFound        the channel does not exist (HTTP 404)
    ├── BackendUnavailable     the backend cannot store or deliver right now (HTTP 503)
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


class ConfigurationError(PushServerError):
    """The configuration is invalid; ``problems`` lists what and how to fix it."""

    def __init__(self, problems: list) -> None:  # list[config.Problem]
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
