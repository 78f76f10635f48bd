"""Every log line names its request's X-Request-ID (asgi-correlation-id), so the request a client saw fail
can be found in the server's log, and a proxy's ID (nginx's $request_id, Envoy's, KServe's) carries through."""

from __future__ import annotations

import re

from asgi_correlation_id import CorrelationIdFilter

HEADER = "X-Request-ID"
PLAIN_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def plain_request_id(value: str) -> bool:
    """A caller's ID is kept when short and plain; anything else (spaces, control characters that could
    forge a log line, 10 kB of text) is replaced by a fresh one."""
    return PLAIN_ID.fullmatch(value) is not None


def logging_config() -> dict:
    """uvicorn's logging (its formatters keep their names, which uvicorn looks up) plus the request ID."""
    handler = {"class": "logging.StreamHandler", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": CorrelationIdFilter, "default_value": "-"}},
        "formatters": {
            "default": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s",
                "use_colors": None,
            },
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(asctime)s %(levelname)s %(client_addr)s - "%(request_line)s" %(status_code)s [%(correlation_id)s]',
            },
        },
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
