"""One line per refused request, tracebacks only for the service's own errors (serving/logs.py)."""

from __future__ import annotations

import logging
import sys

import pytest
from bentoml.exceptions import InternalServerError, InvalidArgument
from pydantic import BaseModel, ValidationError

from serving.logs import RefusalLogFilter


class Body(BaseModel):
    count: int


def record_of(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "bentoml._internal.server.http_app",
        logging.ERROR,
        __file__,
        1,
        "Exception on %s [%s]",
        ("/classify", "POST"),
        exc_info,
    )


def validation_error() -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Body.model_validate({"count": "SECRET-CLIENT-BYTES"})
    return info.value


@pytest.mark.parametrize(
    ("exc", "reasons"),
    [(validation_error(), "int_parsing"), (InvalidArgument("bad"), "InvalidArgument")],
)
def test_a_refusal_becomes_one_info_line(exc: BaseException, reasons: str) -> None:
    record = record_of(exc)
    assert RefusalLogFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == f"refused /classify [POST]: {reasons}"
    assert "SECRET" not in record.getMessage()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), InternalServerError("boom")])
def test_errors_of_the_service_keep_error_and_traceback(exc: BaseException) -> None:
    record = record_of(exc)
    assert RefusalLogFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "Exception on /classify [POST]"
