"""Every log line names its request's X-Request-ID (asgi-correlation-id), so the request a client saw fail
can be found in the server's log, and a proxy's ID (nginx's $request_id, Envoy's, KServe's) carries through."""

from __future__ import annotations

import copy
import re

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.json import JsonFormatter

HEADER = "X-Request-ID"
PLAIN_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def plain_request_id(value: str) -> bool:
    """A caller's ID is kept when short and plain; anything else (spaces, control characters that could
    forge a log line, 10 kB of text) is replaced by a fresh one."""
    return PLAIN_ID.fullmatch(value) is not None


class LineJson(JsonFormatter):
    """One JSON object a line, without uvicorn's `color_message` (the message again, with terminal colours)."""

    def add_fields(self, log_data: dict, record, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("color_message", None)


class AccessJson(LineJson):
    """uvicorn's access line as fields (client, method, path, http_version, status) instead of one string."""

    def add_fields(self, log_data: dict, record, message_dict: dict) -> None:
        super().add_fields(log_data, record, message_dict)
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            log_data.update(client=client, method=method, path=path, http_version=http_version, status=status)


# One JSON object a line (SPOT_LOG_FORMAT=json), for log collectors: the same fields as the text lines
JSON_FIELDS = {"fmt": "%(asctime)s %(levelname)s %(name)s %(correlation_id)s %(message)s",
               "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger",
                                 "correlation_id": "request_id"}}  # fmt: skip
FORMATTERS = {  # per SPOT_LOG_FORMAT; the names "default" and "access" are the ones uvicorn looks up
    "text": {  # uvicorn's lines with the request ID in brackets
        "default": {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s",
            "use_colors": None,
        },
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(asctime)s %(levelname)s %(client_addr)s - "%(request_line)s" %(status_code)s '
            "[%(correlation_id)s]",
        },
    },
    "json": {"default": {"()": LineJson, **JSON_FIELDS}, "access": {"()": AccessJson, **JSON_FIELDS}},
}


def logging_config(log_format: str = "text") -> dict:
    """uvicorn's logging plus the request ID, as text lines or (`json`) one JSON object a line."""
    if log_format not in FORMATTERS:
        raise ValueError(f"log format must be one of {', '.join(FORMATTERS)}, got {log_format!r}")
    handler = {"class": "logging.StreamHandler", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": CorrelationIdFilter, "default_value": "-"}},
        "formatters": copy.deepcopy(FORMATTERS[log_format]),  # dictConfig pops keys out of what it is given
        "handlers": {
            "default": {**handler, "formatter": "default", "stream": "ext://sys.stderr"},
            "access": {**handler, "formatter": "access", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "": {"handlers": ["default"], "level": "INFO"},
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            # not a warning per request whose ID was replaced: a client sending odd IDs would flood the log
            "asgi_correlation_id": {"level": "ERROR"},
        },
    }
