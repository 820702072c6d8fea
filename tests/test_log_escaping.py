"""Log lines cannot be split or disguised by what clients send (issue 19, item 9): both
formats of ``service_common.logs`` escape every non-printable character of a record."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from service_common.logs import TEXT_FORMAT, JsonFormatter, TextFormatter, escape

HOSTILE = ("http://x/a\u2028b\u2029c\x85d\x9be\u202ef\u2066g\u200bh\x1b[31mi\nj\rk\tl\x00m"
           "\x7fn\ud800o\U000e0041p\ufeffq")
"""Line and paragraph separators, NEL, CSI, a bidi override and isolate, a zero-width space,
an ANSI escape, CR/LF/TAB/NUL/DEL, a lone surrogate, a tag character, a BOM."""

UNSAFE = "\u2028\u2029\x85\x9b\u202e\u2066\u200b\x1b\n\r\t\x00\x7f\ud800\U000e0041\ufeff"


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("transformer.inputs", logging.INFO, "x.py", 1, message, args,
                               exc_info)
    record.path = HOSTILE  # an extra field, as the access line has
    return record


def test_text_lines_escape_everything_unprintable() -> None:
    line = TextFormatter(TEXT_FORMAT).format(_record("URL refused: %s", HOSTILE))
    assert line.isprintable() and not set(UNSAFE) & set(line)
    assert line.endswith("URL refused: http://x/a\\u2028b\\u2029c\\x85d\\x9be\\u202ef\\u2066g"
                         "\\u200bh\\x1b[31mi\\x0aj\\x0dk\\x09l\\x00m\\x7fn\\ud800o\\U000e0041p"
                         "\\ufeffq")


def test_text_tracebacks_keep_only_their_line_breaks() -> None:
    text = TextFormatter(TEXT_FORMAT).format(_record("failed", exc=True))
    lines = text.split("\n")
    assert len(lines) > 3 and all(line.isprintable() for line in lines)
    # Only the record's own line starts at the margin: the message's line break too is
    # indented, so it cannot start a line that reads as another record.
    assert all(line.startswith("  ") for line in lines[1:])
    assert lines[-2:] == ["  ValueError: " + escape(HOSTILE.split("\n")[0]),
                          "  " + escape(HOSTILE.split("\n")[1])]


def test_json_lines_escape_and_round_trip() -> None:
    line = JsonFormatter().format(_record("URL refused: %s", HOSTILE, exc=True))
    assert line.isprintable() and "\n" not in line and not set(UNSAFE) & set(line)
    record = json.loads(line)
    assert record["message"] == "URL refused: " + HOSTILE  # exactly what was logged
    assert record["path"] == HOSTILE
    assert record["exception"].endswith("ValueError: " + HOSTILE)


@pytest.mark.parametrize("text", ["plain ascii", "caf\u00e9 \u65e5\u672c \U0001f600", ""])
def test_printable_text_is_unchanged(text: str) -> None:
    assert escape(text) == text
    assert json.loads(JsonFormatter().format(_record("%s", text)))["message"] == text
    assert TextFormatter("%(message)s").format(_record("%s", text)) == text
