"""Cross-request batching: concurrent requests share forward passes, answers stay theirs."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from predictor.batching import MicroBatcher


def _images(n: int, tag: int) -> np.ndarray:
    return np.full((n, 3, 4, 4), tag, dtype=np.uint8)


class Recorder:
    """Stands in for the model: one row per image whose value is the image's tag."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s

    def __call__(self, parts: list[np.ndarray]) -> np.ndarray:
        batch = np.concatenate(parts)  # the requests' own arrays, in order
        self.sizes.append(len(batch))
        time.sleep(self.delay_s)
        return batch[:, 0, 0, :1].astype(np.float32)


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    run = Recorder()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(run, max_images=64, max_wait_s=0.02)
        return await asyncio.gather(*(batcher.embed(_images(n, tag))
                                      for tag, n in enumerate([3, 1, 5, 2], start=1)))

    results = asyncio.run(main())
    assert run.sizes == [11]  # one forward pass for four requests
    for tag, (n, out) in enumerate(zip([3, 1, 5, 2], results, strict=True), start=1):
        assert out.shape == (n, 1) and np.all(out == tag)


def test_batches_respect_max_images_and_order() -> None:
    run = Recorder()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(run, max_images=4, max_wait_s=0.02)
        return await asyncio.gather(*(batcher.embed(_images(n, tag))
                                      for tag, n in enumerate([3, 2, 2, 6, 1], start=1)))

    results = asyncio.run(main())
    assert run.sizes == [3, 4, 6, 1]  # 6 > max_images runs alone; nothing is reordered
    assert [int(r[0, 0]) for r in results] == [1, 2, 3, 4, 5]


def test_requests_arriving_while_busy_join_the_next_batch() -> None:
    run = Recorder(delay_s=0.2)

    async def main() -> None:
        batcher = MicroBatcher(run, max_images=64, max_wait_s=0)
        first = asyncio.create_task(batcher.embed(_images(1, 1)))
        await asyncio.sleep(0.05)  # the model is busy with the first one now
        rest = [asyncio.create_task(batcher.embed(_images(2, t))) for t in (2, 3, 4)]
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert run.sizes == [1, 6]


def test_a_failure_reaches_every_request_of_the_batch_and_the_next_one_works() -> None:
    calls = {"n": 0}

    def flaky(parts: list[np.ndarray]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device fell over")
        return np.zeros((sum(len(p) for p in parts), 1), np.float32)

    async def main() -> None:
        batcher = MicroBatcher(flaky, max_images=8, max_wait_s=0.02)
        results = await asyncio.gather(batcher.embed(_images(1, 1)), batcher.embed(_images(1, 2)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert (await batcher.embed(_images(2, 3))).shape == (2, 1)

    asyncio.run(main())


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(AssertionError):
        MicroBatcher(Recorder(), max_images=0, max_wait_s=0)


def test_without_combining_every_request_runs_alone_in_order() -> None:
    run = Recorder(delay_s=0.05)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(run, max_images=64, max_wait_s=0.02, combine=False)
        return await asyncio.gather(*(batcher.embed(_images(n, tag))
                                      for tag, n in enumerate([3, 1, 5, 2], start=1)))

    results = asyncio.run(main())
    assert run.sizes == [3, 1, 5, 2]  # BATCH_ACROSS_REQUESTS=false: one pass per request
    assert [int(r[0, 0]) for r in results] == [1, 2, 3, 4]


def test_batching_across_requests_is_on_for_cuda_only_by_default() -> None:
    from predictor.settings import PredictorSettings

    auto = PredictorSettings()
    assert auto.combines_requests("cuda") and not auto.combines_requests("cpu")
    forced = PredictorSettings(batch_across_requests="TRUE")  # type: ignore[arg-type]
    assert forced.combines_requests("cpu")
    assert not PredictorSettings(batch_across_requests="false").combines_requests("cuda")
    with pytest.raises(ValueError):
        PredictorSettings(batch_across_requests="sometimes")  # type: ignore[arg-type]


def test_run_gets_the_requests_own_arrays_not_a_copy() -> None:
    """Joining the requests' arrays is run's job, in its thread (a pinned staging buffer on
    CUDA): the batcher passes the arrays themselves, so the event loop copies nothing."""
    seen: list[list[np.ndarray]] = []

    def run(parts: list[np.ndarray]) -> np.ndarray:
        seen.append(parts)
        return np.zeros((sum(len(p) for p in parts), 1), np.float32)

    arrays = [_images(2, 1), _images(3, 2)]

    async def main() -> None:
        batcher = MicroBatcher(run, max_images=8, max_wait_s=0.02)
        await asyncio.gather(*(batcher.embed(a) for a in arrays))

    asyncio.run(main())
    assert len(seen) == 1 and [p is a for p, a in zip(seen[0], arrays, strict=True)] == [
        True, True]
