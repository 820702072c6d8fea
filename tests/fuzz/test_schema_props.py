"""Property-based tests of the request schema (no server).

``requests.validate_similarity`` is the gate every ``POST /similarity`` body goes through
(``requests.PAIRS.parse``).
Properties, over arbitrary JSON-like values (what ``json.loads`` can return: lone surrogates,
NaN and infinities, huge integers included):
- it returns a ``SimilarityRequest`` or raises ``BadRequest`` (422) / ``TooManyPairs`` (413),
  never another exception;
- every error body renders as the server renders it (its own ``SafeJSONResponse``: ASCII
  with escapes, no NaN) and every item names a field and, for a pair, a valid index;
- accepted requests keep pair_ids exactly (strings up to 256 characters, integers), and
  their 200 answer renders too; booleans, floats, objects and longer strings are refused.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from transformer.errors import BadRequest, ServiceError, TooManyPairs
from transformer.requests import validate_similarity
from transformer.routes import SafeJSONResponse
from transformer.schemas import MAX_PAIR_ID_LENGTH, SimilarityRequest
from transformer.scoring import plan_pairs, score_pairs
from transformer.settings import TransformerSettings

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FIELDS = ("reference_image", "generated_image", "pair_id")
LIMIT = TransformerSettings().max_pairs_per_request

# Strings as json.loads returns them: any code point, lone surrogates (from "\ud800") too.
any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]))


def texts(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Text with lone surrogates (``st.text`` drops them even when its alphabet has them)."""
    return st.lists(any_char, min_size=min_size, max_size=max_size).map("".join)


any_text = texts()
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-10**300, 10**300),
    st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(any_text, children, max_size=4)),
    max_leaves=20)
# Objects that look like pairs: the known keys (each maybe missing) with any value.
pair_like = st.one_of(
    st.fixed_dictionaries({}, optional={k: json_values for k in FIELDS}),
    st.fixed_dictionaries({}, optional={
        "reference_image": any_text, "generated_image": any_text, "pair_id": json_scalars,
        "extra": json_values}),
    json_values)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"pairs": json_values}),
    st.fixed_dictionaries({"pairs": st.lists(pair_like, max_size=6)},
                          optional={"unknown": json_values}))


def parse(body: Any) -> SimilarityRequest:
    """A ``/similarity`` body validated as the service validates it (no server needed)."""
    return validate_similarity(body, limit=LIMIT)


def render(content: Any, status: int = 200) -> bytes:
    """Bytes exactly as the server would send them (raises what the server would raise)."""
    return bytes(SafeJSONResponse(content, status_code=status).body)


def check_parse(body: Any) -> SimilarityRequest | None:
    """Parse, checking the error contract; the request when accepted, else None."""
    try:
        request = parse(body)
    except ServiceError as exc:
        assert type(exc) in (BadRequest, TooManyPairs), type(exc)
        assert exc.status_code in (413, 422)
        assert isinstance(exc.detail, str) and exc.detail and "Traceback" not in exc.detail
        out = json.loads(render(exc.body(), exc.status_code))
        assert out["detail"] == exc.detail
        assert out["errors"], "an error names at least one field"
        pairs = body.get("pairs") if isinstance(body, dict) else None
        for item in out["errors"]:
            assert isinstance(item["field"], str) and item["field"], item
            assert isinstance(item["reason"], str) and item["reason"], item
            if item["index"] is not None:
                assert isinstance(pairs, list) and 0 <= item["index"] < len(pairs), item
                assert item["field"].split(".")[0] in FIELDS or not isinstance(
                    pairs[item["index"]], dict), item
            pid = item["pair_id"]
            assert pid is None or (type(pid) in (str, int)), item
        return None
    assert isinstance(request, SimilarityRequest)
    return request


@FUZZ
@given(body=bodies)
def test_parse_accepts_or_raises_service_errors(body: Any) -> None:
    request = check_parse(body)
    if request is not None:
        assert len(request.pairs) <= LIMIT
        assert isinstance(body, dict) and isinstance(body["pairs"], list)
        assert len(request.pairs) == len(body["pairs"])


# --- valid requests ------------------------------------------------------------------------

# Strings without lone surrogates: pydantic's constrained str refuses those (a 422).
pair_ids = st.one_of(
    st.none(),
    st.text(max_size=MAX_PAIR_ID_LENGTH),
    st.integers(),
    st.integers(-10**1000, 10**1000))
images = st.text(st.characters(codec="ascii"), min_size=1, max_size=20)


@st.composite
def valid_pairs(draw: st.DrawFn, max_pairs: int = 8) -> list[dict[str, Any]]:
    pairs = []
    for _ in range(draw(st.integers(0, max_pairs))):
        pair: dict[str, Any] = {"reference_image": draw(images),
                                "generated_image": draw(images)}
        if draw(st.booleans()):
            pair["pair_id"] = draw(pair_ids)
        if draw(st.booleans()):
            pair[draw(any_text.filter(lambda k: k not in FIELDS))] = draw(json_values)
        pairs.append(pair)
    return pairs


@FUZZ
@given(pairs=valid_pairs())
def test_valid_requests_round_trip_pair_ids(pairs: list[dict[str, Any]]) -> None:
    request = parse({"pairs": pairs})
    got = [p.pair_id for p in request.pairs]
    want = [p.get("pair_id") for p in pairs]
    assert got == want
    assert [type(g) for g in got] == [type(w) for w in want]  # 1 stays 1, "1" stays "1"


@FUZZ
@given(pairs=valid_pairs(), seed=st.integers(0, 2**32 - 1))
def test_accepted_requests_answer_renders(pairs: list[dict[str, Any]], seed: int) -> None:
    """The 200 body of any accepted request can be sent (pair_ids echoed as given)."""
    request = parse({"pairs": pairs})
    plan = plan_pairs(request.pairs)
    vectors = np.random.default_rng(seed).standard_normal((len(plan.inputs), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [p.pair_id for p in request.pairs]
    scores = score_pairs(vectors.astype(np.float32), plan, list(range(len(plan.inputs))), ids)
    content = {"scores": [s.model_dump() for s in scores], "processing_time_ms": 1.0}
    note(repr(ids))
    out = json.loads(render(content))
    assert [s["pair_id"] for s in out["scores"]] == ids


@FUZZ
@given(pairs=valid_pairs(max_pairs=3).filter(bool), data=st.data())
def test_bad_pair_ids_are_refused(pairs: list[dict[str, Any]], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(pairs) - 1), label="index")
    bad = data.draw(st.one_of(
        st.booleans(), st.floats(), st.lists(json_scalars, max_size=2),
        st.dictionaries(any_text, json_scalars, max_size=2),
        st.tuples(st.integers(MAX_PAIR_ID_LENGTH + 1, MAX_PAIR_ID_LENGTH + 300),
                  texts(max_size=8)).map(lambda t: "p" * t[0] + t[1])),
        label="pair_id")
    pairs[index]["pair_id"] = bad
    with pytest.raises(BadRequest) as info:
        parse({"pairs": pairs})
    items = info.value.errors
    assert any(e.index == index and e.field.startswith("pair_id") for e in items), items
    check_parse({"pairs": pairs})  # and the error renders


@settings(FUZZ, max_examples=20)
@given(extra=st.integers(1, 50))
def test_too_many_pairs_is_413(extra: int) -> None:
    pair = {"reference_image": "x", "generated_image": "y"}
    with pytest.raises(TooManyPairs) as info:
        parse({"pairs": [pair] * (LIMIT + extra)})
    assert info.value.status_code == 413
    assert info.value.errors and info.value.errors[0].field == "pairs"
    sent = json.loads(render(info.value.body(), 413))
    assert sent["limit"] == {"setting": "MAX_PAIRS_PER_REQUEST", "value": LIMIT}


@pytest.mark.parametrize("pair_id", ["\ud800", "ok\udfff", "\udc00\ud800x"])
def test_lone_surrogate_pair_id_is_a_renderable_422(pair_id: str) -> None:
    """json.loads turns "\\ud800" into a lone surrogate; the 422 must still be sendable
    (the error items echo pair_ids, and UTF-8 cannot encode a lone surrogate)."""
    body = {"pairs": [{"reference_image": "a", "generated_image": "b", "pair_id": pair_id}]}
    with pytest.raises(BadRequest) as info:
        parse(body)
    sent = render(info.value.body(), 422)
    assert sent.isascii() and json.loads(sent)["errors"]  # escaped, never UTF-8-encoded


def test_floats_and_bools_are_not_coerced() -> None:
    for bad in (True, False, 1.0, -0.0, math.inf, math.nan, 1e300):
        with pytest.raises(BadRequest):
            parse({"pairs": [{"reference_image": "a", "generated_image": "b",
                              "pair_id": bad}]})
