"""structlog set-up: JSON lines for machines, a readable console for people, secrets redacted.

Context (rollout, wave, task, appliance) is bound with `bind_context`, which uses
contextvars, so every line logged inside an asyncio task carries the context of that task.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|token|secret|authori[sz]ation|session|cookie|credential|api[_-]?key|x-dr-session",
    re.IGNORECASE,
)
# `scheme://user:password@host` inside any string value. The user may be empty
# (`postgresql://:secret@host`) and the password may hold `@` (`u:p@ss@host`): it runs to
# the LAST `@` before the next blank, so a mistaken split can only hide too much.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@", re.IGNORECASE)
_BASIC = re.compile(r"(Basic|Bearer)\s+[A-Za-z0-9+/=._-]+", re.IGNORECASE)
# an API token (store/tokens.py: "orch_" + 43 URL-safe characters) anywhere in a text
_API_TOKEN = re.compile(r"\borch_[A-Za-z0-9_-]{40,}")


def is_secret_key(key: str) -> bool:
    # credentials_ref names a secret; it is not one
    return key != "credentials_ref" and bool(_SECRET_KEY.search(key))


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\g<pre>" + REDACTED + "@", value)
        value = _BASIC.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        return _API_TOKEN.sub("orch_" + REDACTED, value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask values of secret-looking keys and passwords in URLs."""
    for key in list(event_dict):
        if is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(event_dict[key])
    return event_dict


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = out.isatty()
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=_console_exception_formatter(colors)
        )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if fmt == "json" else _noop,
        redact_secrets,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _console_exception_formatter(colors: bool) -> Callable[[TextIO, Any], None]:
    """Tracebacks for the console: rich's, WITHOUT local variables (structlog's default
    shows them, and locals hold database URLs with their password, new tokens, appliance
    credentials), with the exception messages redacted like every other value (before
    rendering: colours would split a URL apart) and the whole text redacted again."""
    from rich.console import Console
    from rich.traceback import Stack, Traceback

    def clean(stacks: list[Stack]) -> None:
        for stack in stacks:
            stack.exc_value = redact_value(stack.exc_value)
            stack.notes = [redact_value(note) for note in stack.notes]
            for group in stack.exceptions:
                clean(group.stacks)

    def render(sio: TextIO, exc_info: Any) -> None:
        buffer = io.StringIO()
        try:
            width = None if colors else 100
            tb = Traceback.from_exception(*exc_info, show_locals=False, width=width,
                                          word_wrap=True, max_frames=100)
            clean(tb.trace.stacks)
            buffer.write("\n")
            Console(file=buffer, color_system="truecolor" if colors else None,
                    width=width).print(tb)
        except Exception:  # never lose the traceback over its formatting
            buffer = io.StringIO()
            structlog.dev.plain_traceback(buffer, exc_info)
        sio.write(redact_value(buffer.getvalue()))

    return render


def _noop(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict


@contextmanager
def bind_context(**values: Any) -> Iterator[None]:
    """Bind rollout/wave/task/appliance to every log line inside the block (contextvars)."""
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
