"""How log lines are written: one record a line, whatever a request put into it.

A log line may carry text that a client chose: a path, a query string, a header value
quoted in an exception. Written as it came, a carriage return or a line feed in it
forges a line of its own ("... 404\\n2026-01-01 ... ERROR presence: admin logged in"),
and terminal escapes (``ESC [31m``, ``ESC ]0;`` ...) rewrite what an operator's terminal
shows. :class:`SafeFormatter` escapes every control character of a record's text, and
indents the lines that a traceback adds, so that each line of the log that starts in
the first column is the start of a record written by this process.

:class:`JsonFormatter` (``LOG_FORMAT=json``) writes each record as one JSON object a
line instead, for a platform that ships logs to a search index.
"""

from __future__ import annotations

import datetime
import json
import logging
import re

# C0 controls but tab, DEL, C1 controls, and the Unicode characters that end a line or
# reorder what a terminal or an editor shows (line and paragraph separators, bidi
# embeddings, overrides and isolates).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\x0d``,
    ``\\x1b``, ``\\u2028``); printable text, tabs included, is left as it is."""
    return _UNSAFE.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that writes each record as one line of escaped text,
    followed, for an exception or a stack, by its lines indented by two spaces (their
    own control characters escaped too)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        return _indent(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  " + escape(line) for line in text.splitlines())


#: What an HTTP request's access record carries besides its message (``extra=``), and
#: the JSON formatter writes as fields of their own.
REQUEST_FIELDS = ("method", "route", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """``LOG_FORMAT=json``: each record as one JSON object on one line: ``time`` (UTC,
    ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, and for a request
    its ``method``, ``route`` (the template, never the path), ``status`` and
    ``duration_ms``; an exception's traceback as ``exception``.

    Every character outside printable ASCII is written as a JSON escape (``\\n``,
    ``\\u001b``, ``\\u2028``), so a client's text can neither end the line nor reach a
    terminal as a control sequence: one line is one record, as with
    :class:`SafeFormatter`. What the records say is the same as in plain text (the
    filters that keep ids, tokens and cookies out of them run before any formatter).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def _utc(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
