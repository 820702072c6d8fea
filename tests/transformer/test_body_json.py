"""JSON bodies: numbers bounded, NaN and Infinity refused, values counted before parsing,
and the event loop not held while parsing (issue 19, item 7).

The loop's stall is measured in ``bench/worst_case.py`` (8 large bodies at once); here only
what decides it: every refusal comes before the expensive work, and parsing does not
change what a valid body means.
"""

from __future__ import annotations

import json

import pytest

from transformer import body
from transformer.body import MAX_JSON_NUMBER_DIGITS, MAX_JSON_VALUES, load_json
from transformer.errors import BadRequest


def _reason(raw: bytes) -> str:
    with pytest.raises(BadRequest) as excinfo:
        load_json(raw)
    return excinfo.value.detail


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    raw = b'{"pairs": [{"reference_image": "a", "generated_image": "b", "pair_id": %s}]}' % (
        constant.encode())
    assert _reason(raw) == (f"the request body is refused: it has {constant}, which is not a "
                            "JSON number")


def test_long_numbers_are_refused_before_they_are_converted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    digits = "9" * 4299  # just under Python's int_max_str_digits: about 0.2 ms each
    raw = ('{"pairs": [' + ",".join([digits] * 2000) + "]}").encode()
    seen: list[int] = []
    parse_int = body._PARSE_INT

    def counted(text: str) -> int | float:
        seen.append(len(text))
        return parse_int(text)

    monkeypatch.setattr(body, "_PARSE_INT", counted)
    reason = _reason(raw)
    assert seen == [4299]  # one conversion refused, not 2,000 made
    assert reason == ("the request body is refused: it has a number of 4299 characters, "
                      f"over the {MAX_JSON_NUMBER_DIGITS} accepted")
    assert _reason(b'{"x": 1.' + b"5" * 100 + b"}").startswith(
        "the request body is refused: it has a number of 102 characters")


def test_a_body_of_many_values_is_refused_before_parsing() -> None:
    raw = ("[" + ",".join(["1"] * (MAX_JSON_VALUES + 1)) + "]").encode()
    assert _reason(raw) == (f"the request body is refused: it has about {MAX_JSON_VALUES + 1} "
                            f"JSON values, over the {MAX_JSON_VALUES} accepted (the API's "
                            "bodies have a few thousand)")


def test_valid_bodies_parse_as_before() -> None:
    body = {"pairs": [{"reference_image": "data:image/png;base64,AAAA",
                       "generated_image": "https://example.com/a,b,c.png",
                       "pair_id": 10 ** 60}, {"pair_id": -3, "x": [1.5, -2e10, None, True]}],
            "text": "caf\u00e9 \U0001f600 \u2028"}
    for encoding in ("utf-8", "utf-16", "utf-32"):
        raw = json.dumps(body, ensure_ascii=False).encode(encoding)
        assert load_json(raw) == json.loads(raw) == body
    assert load_json(b"\xef\xbb\xbf" + json.dumps(body).encode()) == body  # a UTF-8 BOM
    assert load_json(bytearray(b'{"a": "\\ud800"}')) == {"a": "\ud800"}  # lone surrogate
    big = "A" * 3_000_000  # longer than the decoding windows, split across them
    assert load_json(json.dumps({"s": big, "t": "\u00e9" * 1_000_000}).encode("utf-8")
                     ) == {"s": big, "t": "\u00e9" * 1_000_000}


@pytest.mark.parametrize("raw, start", [
    (b'{"a": ', "the request body is not valid JSON: Expecting value"),
    (b"\xff\xfe\x00", "the request body is not valid JSON"),
    (b"[" * 100_001 + b"]" * 100_001, "the request body is refused: it has about 100001"),
    (b"[" * 50_000 + b"]" * 50_000, "the request body is nested too deeply"),
])
def test_bad_bodies_are_422_with_a_reason(raw: bytes, start: str) -> None:
    assert _reason(raw).startswith(start)
