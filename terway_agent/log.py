"""Logging: structlog, JSON when not on a terminal, request identity in contextvars.

Conventions (see docs/architecture.md):

* event names are static dotted names: ``eni.attach.started``, ``cni.add.done``;
  data goes in key-values, never formatted into the event name;
* pod identity is bound once per request with :func:`bind_request`; trio
  copies contextvars into child tasks and ``trio.to_thread`` worker threads, so
  everything logged while serving the request carries it;
* secrets are never logged: keys named like ``*secret*``, ``*token*``,
  ``*password*`` and ``access_key*`` are redacted by a processor.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

_REDACT_MARKERS = ("secret", "token", "password", "access_key", "credential")


def _redact(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        lk = key.lower()
        if any(m in lk for m in _REDACT_MARKERS) and key != "event":
            value = event_dict[key]
            if value not in (None, "", False):
                event_dict[key] = "<redacted>"
    return event_dict


def configure(level: str = "info", json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog for the agent process.

    :param level: minimum level name (debug, info, warning, error).
    :param json: force JSON (True) or console rendering (False); default: JSON
        unless ``stream`` is a terminal.
    :param stream: where to write; default stderr.
    """
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; ``name`` becomes the ``component`` key."""
    if name:
        initial["component"] = name
    # Initial values stay lazy: the logger picks up configure() even when it
    # was created at import time, before configure() ran.
    return structlog.get_logger(**initial)


@contextmanager
def bind_request(**identity: Any) -> Iterator[None]:
    """Bind request identity (pod namespace/name, container id, verb) for the
    duration of a request.  Tokens are reset on exit so identities never leak
    into the next request served by the same task."""
    tokens = structlog.contextvars.bind_contextvars(**identity)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
