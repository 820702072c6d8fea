"""Decoding overlapped with inference: chunks sent while decoding goes on, answers in order."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.images import check_response, distinct_images
from testing.procs import Predictor
from tests.conftest import start_transformer
from transformer.pipeline import ChunkSender


def _image(value: int) -> np.ndarray:
    return np.full((3, 224, 224), value, dtype=np.uint8)


class _Recorder:
    """An embed coroutine that answers each image's first pixel and records each call."""

    def __init__(self, fail_on_call: int | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.fail_on_call = fail_on_call
        self.delay_s = delay_s
        self.cancelled = 0

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append([int(img[0, 0, 0]) for img in batch])
        call = len(self.calls)
        if call == self.fail_on_call:
            await asyncio.sleep(0)
            raise RuntimeError(f"call {call} failed")
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return batch[:, 0, 0, :1].astype(np.float32)


def test_full_chunks_are_sent_while_images_are_still_added() -> None:
    async def scenario() -> tuple[list[int], list[np.ndarray], _Recorder]:
        embed = _Recorder()
        sender = ChunkSender(embed, chunk_images=3)
        rows, calls_seen = [], []
        for value in range(8):
            rows.append(sender.add(_image(value)))
            calls_seen.append(sender.calls)
            await asyncio.sleep(0)  # a decode finishing later
        assert calls_seen == [0, 0, 1, 1, 1, 2, 2, 2]  # sent as soon as 3 rows are there
        return rows, await sender.results(), embed

    rows, results, embed = asyncio.run(scenario())
    assert rows == list(range(8))
    assert embed.calls == [[0, 1, 2], [3, 4, 5], [6, 7]]  # the remainder goes in results()
    assert np.concatenate(results)[:, 0].tolist() == list(range(8))


def test_chunk_zero_sends_everything_in_one_call_at_the_end() -> None:
    async def scenario() -> tuple[int, _Recorder, list[np.ndarray]]:
        embed = _Recorder()
        sender = ChunkSender(embed, chunk_images=0)
        for value in range(5):
            sender.add(_image(value))
        before = sender.calls
        return before, embed, await sender.results()

    before, embed, results = asyncio.run(scenario())
    assert before == 0 and embed.calls == [[0, 1, 2, 3, 4]] and len(results) == 1


def test_a_collecting_sender_keeps_every_row() -> None:
    sender: ChunkSender[np.ndarray] = ChunkSender(None, chunk_images=2)
    for value in range(5):
        sender.add(_image(value))
    assert sender.calls == 0 and sender.pixels()[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert ChunkSender(None, chunk_images=0).pixels().shape == (0, 3, 224, 224)


def test_a_failing_chunk_fails_the_results_and_cancels_the_others() -> None:
    unretrieved: list[dict] = []

    async def scenario() -> _Recorder:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unretrieved.append(ctx))
        embed = _Recorder(fail_on_call=1, delay_s=5)
        sender = ChunkSender(embed, chunk_images=2)
        for value in range(6):
            sender.add(_image(value))
        with pytest.raises(RuntimeError, match="call 1 failed"):
            await sender.results()
        await asyncio.sleep(0.1)
        return embed

    embed = asyncio.run(scenario())
    assert embed.cancelled == 2  # the calls still in flight were abandoned
    assert unretrieved == []  # and no 'exception was never retrieved' noise


def test_cancel_abandons_calls_in_flight() -> None:
    async def scenario() -> _Recorder:
        embed = _Recorder(delay_s=10)
        sender = ChunkSender(embed, chunk_images=1)
        sender.add(_image(1))
        sender.add(_image(2))
        await asyncio.sleep(0.01)
        sender.cancel()
        await asyncio.sleep(0.01)
        return embed

    assert asyncio.run(scenario()).cancelled == 2


def _predictor_calls(service: str) -> float:
    text = httpx.get(f"{service}/metrics", timeout=10).text
    match = re.search(r"^similarity_predictor_call_seconds_count ([0-9.e+]+)$", text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_pipelined_and_single_call_answers_agree(predictor_server: Predictor,
                                                 tmp_path: Path) -> None:
    """One request through a transformer that sends chunks of 3 and through one that sends
    a single call: the same scores, in order, duplicates and cache hits included."""
    imgs = [base64.b64encode(x).decode() for x in distinct_images(9, size=160)]
    pairs = [{"reference_image": imgs[0], "generated_image": imgs[i], "pair_id": f"p{i}"}
             for i in range(1, 9)]
    pairs.append({"reference_image": imgs[3], "generated_image": imgs[3], "pair_id": "same"})
    warm = [{"reference_image": imgs[1], "generated_image": imgs[2]}]  # then cache hits
    answers = {}
    for chunk in (3, 0):
        env = {"PIPELINE_CHUNK_IMAGES": str(chunk)}
        with start_transformer(predictor_server.grpc, tmp_path / f"t{chunk}.log",
                               env=env) as url:
            assert httpx.post(f"{url}/similarity", json={"pairs": warm},
                              timeout=120).status_code == 200
            calls = _predictor_calls(url)
            r = httpx.post(f"{url}/similarity", json={"pairs": pairs}, timeout=120)
            assert r.status_code == 200, r.text
            check_response(r.json(), pairs)
            # 9 distinct images, 2 of them cached: 7 to embed, in chunks of 3 or in one call
            assert _predictor_calls(url) - calls == (3 if chunk == 3 else 1)
            answers[chunk] = [s["distance"] for s in r.json()["scores"]]
    assert answers[3] == pytest.approx(answers[0], abs=1e-6)
    assert answers[3][-1] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.slow
def test_a_bad_image_fails_a_pipelined_request_cleanly(predictor_server: Predictor,
                                                       tmp_path: Path) -> None:
    imgs = [base64.b64encode(x).decode() for x in distinct_images(6, size=160)]
    pairs = [{"reference_image": imgs[i], "generated_image": imgs[i + 1], "pair_id": i}
             for i in range(5)]
    pairs[3]["generated_image"] = base64.b64encode(b"not an image").decode()
    log = tmp_path / "t.log"
    with start_transformer(predictor_server.grpc, log,
                           env={"PIPELINE_CHUNK_IMAGES": "1"}) as url:
        r = httpx.post(f"{url}/similarity", json={"pairs": pairs}, timeout=120)
        assert r.status_code == 422
        errors = r.json()["errors"]
        assert [(e["index"], e["pair_id"], e["field"]) for e in errors] == [
            (3, 3, "generated_image")]
        good = httpx.post(f"{url}/similarity", json={"pairs": pairs[:3]}, timeout=120)
        assert good.status_code == 200
        check_response(good.json(), pairs[:3])
    assert "Traceback" not in log.read_text() and "never retrieved" not in log.read_text()
