"""The transformer's log, read from a real process: one line per public request at INFO,
none per probe, request ids in and out, and JSON lines with ``LOG_FORMAT=json``.

The predictor is the fake one (``fake_predictor``): the log under test is the
transformer's; the predictor's own is tested in ``tests/predictor/test_server.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from testing.fake_predictor import fake_predictor
from testing.images import b64, distinct_images
from tests.conftest import start_transformer

pytestmark = pytest.mark.slow

IMAGES = [b64(i) for i in distinct_images(4, size=64)]
BODY = {"pairs": [{"reference_image": IMAGES[0], "generated_image": IMAGES[1]},
                  {"reference_image": IMAGES[2], "generated_image": IMAGES[3]}]}


@contextmanager
def transformer(log: Path, env: dict[str, str]) -> Iterator[str]:
    with fake_predictor() as grpc_host, start_transformer(grpc_host, log, env=env) as url:
        yield url


def traffic(url: str) -> list[httpx.Response]:
    """3 scoring requests (one with the client's id), 1 refused route, 8 probes/scrapes."""
    out = [httpx.post(f"{url}/similarity", json=BODY, timeout=60,
                      headers={"X-Request-ID": "client-id-1"}),
           httpx.post(f"{url}/similarity", json=BODY, timeout=60),
           httpx.post(f"{url}/similarity", json=BODY, timeout=60,
                      headers={"X-Request-ID": "bad id\twith a tab"}),
           httpx.post(f"{url}/v2/models/dreamsim/infer", json={}, timeout=60)]
    for path in ("/health", "/health", "/health", "/v2/health/live", "/v2/health/ready",
                 "/v2/models/dreamsim/ready", "/metrics", "/health"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path
    return out


def test_one_line_per_request_none_per_probe(tmp_path: Path) -> None:
    log = tmp_path / "transformer.log"
    with transformer(log, {}) as url:
        responses = traffic(url)
    assert [r.status_code for r in responses] == [200, 200, 200, 404]
    # The request id: the client's when usable, else a new one; always returned.
    ids = [r.headers["x-request-id"] for r in responses]
    assert ids[0] == "client-id-1"
    assert re.fullmatch(r"[0-9a-f]{32}", ids[1]) and re.fullmatch(r"[0-9a-f]{32}", ids[2])
    assert len(set(ids)) == 4

    text = log.read_text()
    access = [line for line in text.splitlines() if "transformer.access" in line]
    assert len(access) == 4, access
    assert all(" INFO " in line for line in access)
    assert "POST /similarity 200" in access[0] and "id=client-id-1" in access[0]
    assert "pairs=2 images=4" in access[0]
    assert f"id={ids[1]}" in access[1]
    assert "POST /v2/models/dreamsim/infer 404" in access[3]
    # No probe, scrape or per-call line at INFO (KServe and uvicorn wrote one per request).
    for chatter in ("/health", "/metrics", "/ready", "kserve.trace", "uvicorn.access",
                    "requestId"):
        assert chatter not in text, (chatter, [x for x in text.splitlines() if chatter in x])


def test_json_lines_with_debug_detail(tmp_path: Path) -> None:
    log = tmp_path / "transformer.log"
    with transformer(log, {"LOG_FORMAT": "json", "LOG_LEVEL": "debug"}) as url:
        responses = traffic(url)
    records = []
    for line in log.read_text().splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "transformer.access"]
    scored = [r for r in access if r["path"] == "/similarity"]
    assert [r["request_id"] for r in scored] == [
        r.headers["x-request-id"] for r in responses[:3]]
    assert all(r["level"] == "INFO" and r["status"] == 200 and r["pairs"] == 2
               and r["images"] == 4 and r["duration_ms"] > 0 for r in scored)
    # At DEBUG the probes and the library lines are there, as DEBUG records.
    probes = [r for r in access if r["path"] == "/health"]
    assert len(probes) >= 4 and all(r["level"] == "DEBUG" for r in probes)
    trace = [r for r in records if r["logger"] == "kserve.trace"]
    assert trace and all(r["level"] == "DEBUG" for r in trace)


HOSTILE_URL = "http://localhost/a\u2028FORGED\u2029b\x85c\x9b31md\u202eevil\u2066e"
"""A URL the transformer refuses (localhost is a blocked address) and logs, with the
characters that split or disguise a log line (issue 19, item 9)."""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_client_strings_are_escaped_in_the_log(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "transformer.log"
    with transformer(log, {"LOG_FORMAT": fmt}) as url:
        r = httpx.post(f"{url}/similarity", timeout=60, json={"pairs": [
            {"reference_image": HOSTILE_URL, "generated_image": IMAGES[0]}]})
        assert r.status_code == 422, r.text
    text = log.read_text(encoding="utf-8", errors="surrogateescape")
    refused = [line for line in text.split("\n") if "URL refused" in line]
    assert len(refused) == 1, text
    for char in "\u2028\u2029\x85\x9b\u202e\u2066":
        assert char not in text, (repr(char), refused)
    assert all(line.isprintable() for line in text.split("\n"))
    if fmt == "json":
        assert HOSTILE_URL in json.loads(refused[0])["message"]  # exactly, once parsed
    else:
        assert ("a\\u2028FORGED\\u2029b\\x85c\\x9b31md\\u202eevil\\u2066e" in refused[0])
