"""vqvae-serve's log configuration (app.logs) in-process: the probe filter and the JSON lines, applied with
``logging.config.dictConfig`` as uvicorn applies them. The server's own log is tested in test_app_http."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from app.logs import LOG_FORMATS, QuietProbes, ShutdownDeadline, log_config


def access_record(method: str, path: str, status: int) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it (``httptools_impl``)."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("10.0.0.7:5100", method, path, "1.1", status),
        None,
    )


@pytest.mark.parametrize(
    ("method", "path", "status", "kept"),
    [
        ("GET", "/healthz", 200, False),
        ("HEAD", "/readyz", 200, False),
        ("GET", "/healthz?probe=1", 200, False),  # uvicorn logs the query string too
        ("GET", "/readyz", 503, True),  # a failed probe is what an operator looks for
        ("POST", "/healthz", 405, True),
        ("GET", "/healthzz", 404, True),
        ("GET", "/model", 200, True),
        ("POST", "/encode", 200, True),
    ],
)
def test_probes_answered_2xx_are_left_out_of_the_access_log(method: str, path: str, status: int, kept: bool) -> None:
    assert QuietProbes().filter(access_record(method, path, status)) is kept


def test_probes_are_known_under_the_root_path() -> None:
    """uvicorn logs the path with the root path before it (VQVAE_ROOT_PATH)."""
    quiet = QuietProbes(root_path="/vqvae")
    assert not quiet.filter(access_record("GET", "/vqvae/healthz", 200))
    assert quiet.filter(access_record("GET", "/healthz", 404))


def test_other_records_pass_the_probe_filter() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "GET %s", ("/healthz",), None)
    assert QuietProbes().filter(record)


@contextmanager
def configured(config: dict[str, Any]) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """The config applied as uvicorn applies it, its two handlers writing to buffers: (default, access)."""
    streams = io.StringIO(), io.StringIO()
    for handler, stream in zip(("default", "access"), streams, strict=True):
        config["handlers"][handler]["stream"] = stream
    loggers = ("uvicorn", "uvicorn.access", "app")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in loggers}
    try:
        logging.config.dictConfig(config)
        yield streams
    finally:
        for name, (handlers, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)


def log_a_request_and_a_probe() -> None:
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5100", "POST", "/encode", "1.1", 200)
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5101", "GET", "/readyz", "1.1", 200)
    logging.getLogger("app.inference").warning("model %s", "loaded")


def test_json_lines_carry_the_access_fields_and_the_time() -> None:
    with configured(log_config("info", "json", probes=True)) as (default, access):
        log_a_request_and_a_probe()
    requests = [json.loads(line) for line in access.getvalue().splitlines()]
    assert [(r["method"], r["path"], r["status"], r["client"]) for r in requests] == [
        ("POST", "/encode", 200, "10.0.0.7:5100"),
        ("GET", "/readyz", 200, "10.0.0.7:5101"),
    ]
    assert requests[0]["message"] == '10.0.0.7:5100 - "POST /encode HTTP/1.1" 200'
    assert requests[0]["level"] == "INFO" and requests[0]["logger"] == "uvicorn.access"
    (app_line,) = [json.loads(line) for line in default.getvalue().splitlines()]
    assert (app_line["level"], app_line["logger"], app_line["message"]) == ("WARNING", "app.inference", "model loaded")
    assert "method" not in app_line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", app_line["time"]), app_line["time"]


def test_a_traceback_stays_inside_its_json_line() -> None:
    with configured(log_config("info", "json")) as (default, _):
        try:
            raise ValueError("bad pixels")
        except ValueError:
            logging.getLogger("app.routes").exception("request failed")
        logging.getLogger("app.routes").warning("where", stack_info=True)
    first, second = (json.loads(line) for line in default.getvalue().splitlines())
    assert first["message"] == "request failed"
    assert "ValueError: bad pixels" in first["exception"]
    assert "test_a_traceback_stays_inside_its_json_line" in second["stack"] and "exception" not in second


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_probes_are_left_out_unless_asked_for_in_either_format(log_format: Any) -> None:
    with configured(log_config("info", log_format)) as (_, access):
        log_a_request_and_a_probe()
    assert "/encode" in access.getvalue() and "/readyz" not in access.getvalue()
    with configured(log_config("info", log_format, probes=True)) as (_, access):
        log_a_request_and_a_probe()
    assert "/readyz" in access.getvalue()


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_the_shutdown_deadline_is_a_warning_that_says_what_requests_get(log_format: Any) -> None:
    """uvicorn logs requests still running at VQVAE_SHUTDOWN_TIMEOUT_S as an error; each gets its designed 503."""
    error = logging.getLogger("uvicorn.error")
    with configured(log_config("info", log_format)) as (default, _):
        error.error(ShutdownDeadline.MESSAGE, 7)
        error.error("Exception in ASGI application")  # any other error stays one
    deadline, other = default.getvalue().splitlines()
    assert "Cancel 7 running task(s), timeout graceful shutdown exceeded: each is answered 503" in deadline
    assert "WARNING" in deadline and "ERROR" not in deadline
    assert "ERROR" in other
    level = error.level
    with configured(log_config("error", log_format)) as (default, _):
        error.setLevel(logging.ERROR)  # as uvicorn sets it from --log-level, after the config
        try:
            error.error(ShutdownDeadline.MESSAGE, 7)
        finally:
            error.setLevel(level)
    assert default.getvalue() == ""  # a log kept to errors leaves the warning out
