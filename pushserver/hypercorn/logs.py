"""hypercorn's access logger with the request's fields on each record, for
``runpushserver --log-format json`` (:mod:`pushserver.logs` formats them)."""

from __future__ import annotations

from typing import Any

from hypercorn.logging import Logger

from ..logs import access_fields


class AccessLogger(Logger):
    """hypercorn's logger, with the access line's fields on the record (``access``)."""

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        if self.access_logger is None:
            return
        fields = access_fields(request, response, request_time)
        self.access_logger.info(
            '%s "%s %s" %s %.6fs',
            fields["client"],
            fields["method"],
            fields["path"],
            "-" if fields["status"] is None else fields["status"],
            request_time,
            extra={"access": fields},
        )
