"""``vqvae-serve``'s logging: uvicorn's config plus the app's loggers, each line with its time, as text or as JSON,
and the access-log lines of successful health probes left out unless asked for."""

from __future__ import annotations

import copy
import json
import logging
from datetime import datetime
from typing import Any, Literal, get_args

from uvicorn.config import LOGGING_CONFIG

LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # ISO 8601 with the offset: 2026-11-27T09:15:02+0000
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
PROBE_PATHS = ("/healthz", "/readyz")  # app.routes.health
_PROBE_METHODS = frozenset({"GET", "HEAD"})
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")  # uvicorn's access-log arguments, in order


def access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The fields of one of uvicorn's access-log lines (``'%s - "%s %s HTTP/%s" %d'``), or None for any other
    record. The path carries the root path and the query string, as uvicorn logs it."""
    if record.name != "uvicorn.access" or not isinstance(record.args, tuple) or len(record.args) != 5:
        return None
    return dict(zip(_ACCESS_FIELDS, record.args, strict=True))


class QuietProbes(logging.Filter):
    """Leaves out the access-log lines of health probes answered 2xx: a Kubernetes pod's liveness and readiness
    probes every 10 s, and the Docker image's health check, wrote thousands of lines a day that said nothing (an ops
    review). A probe that fails is kept, as is every other request."""

    def __init__(self, root_path: str = "") -> None:
        super().__init__()
        self._paths = frozenset(f"{root_path}{path}" for path in PROBE_PATHS)

    def filter(self, record: logging.LogRecord) -> bool:
        fields = access_fields(record)
        if fields is None:
            return True
        path = str(fields["path"]).partition("?")[0]
        probe = fields["method"] in _PROBE_METHODS and path in self._paths
        return not (probe and isinstance(fields["status"], int) and 200 <= fields["status"] < 300)


class ShutdownDeadline(logging.Filter):
    """uvicorn's line for requests still running at ``VQVAE_SHUTDOWN_TIMEOUT_S``, as a warning that says what they
    get: it logged it as an error, and an alert on errors fired at every ``docker stop`` under load, while each such
    request is answered a JSON 503 with ``Retry-After`` as designed (``app.middleware``; a user review's finding). The
    line is kept where the log's level admits warnings."""

    MESSAGE = "Cancel %s running task(s), timeout graceful shutdown exceeded"  # uvicorn.server's, word for word

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.error" or record.msg != self.MESSAGE or record.levelno != logging.ERROR:
            return True
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.msg = f"{self.MESSAGE}: each is answered 503 with Retry-After"
        return logging.getLogger(record.name).isEnabledFor(logging.WARNING)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``time`` to the millisecond, ``level``, ``logger``, ``message``; an access line's
    request in fields of its own; ``exception`` for a traceback, ``stack`` for ``stack_info``), for log pipelines
    that index fields rather than parse text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            # to the millisecond: a pipeline orders the lines of one second by it
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(access_fields(record) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def command_line(message: str, level: int, log_format: LogFormat, command: str = "vqvae-serve") -> str:
    """A line the command writes itself before the server starts (a setting's warning, a refusal to start): plain
    ``vqvae-serve: warning: ...``, or under the JSON format a JSON object as the server's own lines are. Plain, a
    pipeline that parses JSON took a failed start's reason as a line without a level, and an alert on errors did
    not see it."""
    if log_format == "json":
        fields = {"name": command, "msg": message, "levelno": level, "levelname": logging.getLevelName(level)}
        return JsonFormatter().format(logging.makeLogRecord(fields))
    prefix = "warning: " if level == logging.WARNING else ""
    return f"{command}: {prefix}{message}"


def log_config(level: str, log_format: LogFormat = "text", probes: bool = False, root_path: str = "") -> dict[str, Any]:
    """uvicorn's logging config plus our ``app`` loggers on the same handler (also in worker processes), each line
    with its time: uvicorn's has none, and a log kept in a file (``nohup``, an audit trail) could not say when a
    request came. Docker and Kubernetes add their own only when asked (``docker logs -t``)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for name, formatter in config["formatters"].items():
        if log_format == "json":
            config["formatters"][name] = {"()": f"{__name__}.JsonFormatter"}
        else:
            formatter["fmt"] = f"%(asctime)s {formatter['fmt']}"
            formatter["datefmt"] = LOG_TIME_FORMAT
    config["filters"] = {"shutdown_deadline": {"()": f"{__name__}.ShutdownDeadline"}}
    config["handlers"]["default"]["filters"] = ["shutdown_deadline"]
    if not probes:
        config["filters"]["quiet_probes"] = {"()": f"{__name__}.QuietProbes", "root_path": root_path}
        config["handlers"]["access"]["filters"] = ["quiet_probes"]
    config["loggers"]["app"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config
