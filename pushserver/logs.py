"""Structured logs: one JSON object per line (``runpushserver --log-format json``).

:class:`pushserver.hypercorn.logs.AccessLogger` replaces hypercorn's access logger and
attaches the request's fields (:func:`access_fields`) to the ``pushserver.access`` record
(``record.access``); :class:`JSONFormatter` writes every
record as one JSON object: an access record as its fields, any other as ``message``. A
project configuring ``LOGGING`` itself can use the formatter there::

    "formatters": {"json": {"()": "pushserver.logs.JSONFormatter"}}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import unquote


def _iso(timestamp: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}Z"


def _transport(scope: Any) -> str | None:
    kind = scope.get("pushserver.location")
    if kind == "subscriber":
        if scope["type"] == "websocket":
            return "websocket"
        return str(scope.get("pushserver.transport", "longpoll"))
    return kind  # "publisher", "status", or None (Django, or no location matched)


def access_fields(scope: Any, response: Any, duration: float) -> dict[str, Any]:
    """The fields of one request's log line (hypercorn calls it when a response ends, and
    when a WebSocket is accepted or refused)."""
    client = scope.get("client")
    status = response.get("status") if response else None
    size = None
    for name, value in (response or {}).get("headers", ()):
        if name.lower() == b"content-length":
            size = int(value) if value.isdigit() else None
            break
    raw = scope.get("pushserver.channel")
    kind = scope.get("pushserver.location")
    return {
        "client": client[0] if client else None,
        "method": scope.get("method", "GET"),
        "path": scope.get("path"),
        "protocol": scope.get("http_version", "ws") if scope["type"] == "http" else "ws",
        "status": status,
        "bytes": size,
        "duration": round(duration, 6),
        "transport": _transport(scope),
        "channel": unquote(raw, errors="replace") if raw and kind != "status" else None,
    }


class JSONFormatter(logging.Formatter):
    """Each record as one JSON object on one line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, then the access fields or ``message`` (and ``exception``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)
