"""Logging of both servers: one format (text or JSON lines), one level, no per-call chatter.

What a platform team keeps: one line per public request at INFO (the transformer's
``access_log``), start-up and problems at INFO and above, everything per call at DEBUG.
KServe and uvicorn log per request at INFO: uvicorn's access line, two ``kserve.trace``
timing lines (wall and CPU time) for every request, probes included, and a latency line per
inference. Their loggers are routed to the one root handler here and those records demoted
to DEBUG, so ``LOG_LEVEL=DEBUG`` brings them back.

``LOG_FORMAT=json`` writes one JSON object per line (``time``, ``level``, ``logger``,
``message``, the record's extra fields, ``request_id`` while a request is served,
``exception``), as log collectors (Fluent Bit, Vector, Cloud Logging) parse without rules.

Records carry what clients sent (URLs, paths, ids, error reasons), so both formats escape
every character that is not printable (:func:`escape`): control characters (C0, DEL and C1:
U+0085 NEL is a line break to some readers, U+009B CSI starts a terminal escape sequence),
U+2028 and U+2029 (line and paragraph separators, line breaks to JavaScript and some log
viewers), format characters (U+202E and the other bidirectional overrides, which make a
line read differently from what it holds; zero-width characters) and lone surrogates. A
client can therefore neither start a line nor disguise one. Text lines get ``\\xNN`` /
``\\uNNNN`` escapes (a traceback keeps its line breaks, and each of its lines is
indented, so none starts like a record); JSON lines get JSON's ``\\uNNNN``
escapes, so the parsed value is exactly what was logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY_LOGGERS = ("kserve.trace", "uvicorn.access")
"""Loggers that write a line per request or per call at INFO: demoted to DEBUG."""

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served (set by the transformer's access log middleware)."""

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
# uvicorn adds ``color_message`` (the message with terminal colour codes): not for a file.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}


class LogSettings(BaseSettings):
    """Logging settings, shared by both components' settings classes."""

    log_format: LogFormat = Field("text", description="text, or json: one JSON object a line")
    log_level: LogLevel = Field(
        "INFO", description="INFO: one line per public request; DEBUG adds probes and "
                            "every predictor call")

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip()
        return value.upper() if value.lower() in ("debug", "info", "warning", "error") \
            else value.lower()


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON writes characters past the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def escape(text: str, *, keep: str = "", json_escapes: bool = False) -> str:
    """``text`` with every non-printable character but the space and those in ``keep``
    escaped (``str.isprintable``: categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs but the
    space), as ``\\xNN``/``\\uNNNN``, or as JSON ``\\uNNNN`` escapes."""
    if text.isprintable():
        return text
    one = _json_escape_char if json_escapes else _escape_char
    return "".join(c if c.isprintable() or c == " " or c in keep else one(c) for c in text)


_JSON_UNSAFE = re.compile(r"[^\x20-\x7e]")  # json.dumps escapes only '"', '\\' and C0


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines, escaped (:func:`escape`): one record, one line, plus its
    traceback."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _continued(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continued(super().formatStack(stack_info))


def _continued(text: str) -> str:
    """A traceback escaped but for its line breaks, each line indented: a line break in an
    exception's message cannot start a line that reads as a record."""
    return "  " + escape(text, keep="\n").replace("\n", "\n  ")


def _json_safe(text: str) -> str:
    """JSON text with its non-printable characters as JSON escapes (they can only be
    inside strings: the structure is ASCII)."""
    return _JSON_UNSAFE.sub(lambda m: escape(m.group(), json_escapes=True), text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) or \
                    value is None else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _json_safe(json.dumps(out, ensure_ascii=False, default=str))


class _RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records made while a request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class _Demote(logging.Filter):
    """Turns a logger's records into DEBUG records (shown only at ``LOG_LEVEL=DEBUG``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True  # warnings and errors stay what they are
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure(settings: LogSettings) -> None:
    """Route every logger (ours, KServe's, uvicorn's, warnings) to one stderr handler in
    ``settings.log_format`` at ``settings.log_level``. Call before KServe's ModelServer is
    made: it leaves logging alone when the root logger has a handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json"
                         else TextFormatter(TEXT_FORMAT))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
        lib.setLevel(logging.NOTSET)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).addFilter(_Demote())
    logging.captureWarnings(True)  # Python warnings as records, in the same format
    # KServe 0.21's own response class; nothing an operator can act on (two lines a start).
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
