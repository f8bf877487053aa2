"""What the service logs for a refused request: one concise line, not an ERROR traceback.

BentoML 1.4 logs every request its input validation refuses (a pydantic ``ValidationError``,
a ``BentoMLException`` with a 4xx status) as ``ERROR "Exception on PATH [METHOD]"`` with the
whole traceback, whose pydantic message quotes the start of the client's body: a few thousand
bad uploads flood the log with megabytes of tracebacks and client bytes. A refusal is the
client's mistake, already answered with a 4xx and counted in
``rankcal_rejected_requests_total``; :class:`RefusalLogFilter` turns those records into one INFO
line naming the path and the refusal reasons. Errors of the service itself (any other exception,
a 5xx) keep their ERROR level and traceback.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# The logger and message BentoML's HTTP app uses for exceptions raised while handling a request.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"
_EXCEPTION_MESSAGE = "Exception on %s [%s]"


def _refusal_reasons(exc: BaseException) -> str | None:
    """The reasons of a client refusal, or ``None`` for an error of the service itself."""
    if isinstance(exc, ValidationError):
        # The error types only: the messages would quote the client's input.
        return ",".join(sorted({str(e["type"]) for e in exc.errors(include_input=False)}))
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return type(exc).__name__
    return None


class RefusalLogFilter(logging.Filter):
    """Rewrites BentoML's exception record of a refused request into one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _EXCEPTION_MESSAGE or not record.exc_info:
            return True
        exc = record.exc_info[1]
        reasons = None if exc is None else _refusal_reasons(exc)
        if reasons is None:
            return True
        path, method = record.args if isinstance(record.args, tuple) else ("?", "?")
        record.msg = "refused %s [%s]: %s"
        record.args = (path, method, reasons)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return True


def install_refusal_log_filter() -> None:
    """Attach :class:`RefusalLogFilter` to BentoML's HTTP logger once (idempotent)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, RefusalLogFilter) for f in logger.filters):
        logger.addFilter(RefusalLogFilter())
