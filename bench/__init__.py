"""Loopback benchmark of pushserver against a trivial ASGI floor and nchan (``nox -s bench``)."""
