"""Running batches of images through the model: buckets, CUDA graphs, pinned staging.

A batch arrives as a list of uint8 ``[n_i, 3, 224, 224]`` arrays (the gRPC buffers of
the requests sharing it, read-only, never concatenated on the event loop). Two runners:

- :class:`EagerRunner` (CPU): one tensor over the arrays (no copy for a single request),
  chunked by ``DreamSimEmbedder.embed``.
- :class:`StagedRunner` (CUDA): each of ``slots`` staging slots holds a pinned host buffer
  and a device buffer. ``run`` copies the arrays straight into a slot's pinned buffer (the
  one host copy left), then, holding the device only to enqueue: a non-blocking
  host-to-device copy on a copy stream, the forward on a compute stream that waits for
  it, and a non-blocking device-to-host copy of the embeddings into the slot's pinned
  output. It waits for its own work outside the lock, so with two slots a second batch is
  filled and copied while the first computes (two batches in flight).

The forward on CUDA is :class:`GraphForward`: a CUDA graph per batch-size bucket
(:func:`bucket_sizes`), captured (and so warmed up) before the predictor reports ready; a
batch runs in the smallest bucket that holds it, padding rows ignored. Launching one graph
replaces about 190 kernel launches, which bind small batches on a fast GPU. Rows do not
interact in the model (every op is per image or per token), so padding changes no row's
mathematics; on GPU the kernels chosen for a bucket's shape may round differently from
those of the unpadded shape, by the same order as any change of batch size (README,
"Batch size and embeddings").

Device primitives (pinned buffers, streams, events, graphs) go through :class:`CudaOps`,
so that the logic above runs on the CPU in the tests with a stand-in (tests/predictor/
test_gpu_path.py, ``FakeGpuOps``, which says it stands in for a GPU).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from queue import SimpleQueue
from typing import Any, Protocol

import numpy as np
import torch

from service_common.wire import IMAGE_SHAPE

from .model import DreamSimEmbedder

log = logging.getLogger(__name__)


# gRPC's raw input buffers are read-only; the model only ever reads them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning)


def bucket_sizes(limit: int) -> tuple[int, ...]:
    """Batch sizes graphs are captured for: 1, 2, 4, 8, then steps of 1.5x / 2x (12, 16,
    24, 32, 48, 64, 96 ...) up to ``limit``, which is always one.

    A batch pads up to the next bucket: at most a third of a bucket is padding past 8.
    """
    assert limit >= 1
    sizes = {1, 2, 4, 8}
    power = 8
    while power < limit:
        sizes.update((power + power // 2, power * 2))
        power *= 2
    return tuple(sorted({s for s in sizes if s < limit} | {limit}))


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``n`` images; None above the largest."""
    for b in buckets:
        if b >= n:
            return b
    return None


def split_parts(parts: Sequence[np.ndarray], size: int
                ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Chunks of at most ``size`` images over ``parts``, in order, as views:
    ``(start row, [slices])``. No data is copied."""
    chunk: list[np.ndarray] = []
    count = start = 0
    for part in parts:
        offset = 0
        while offset < len(part):
            take = min(size - count, len(part) - offset)
            chunk.append(part[offset : offset + take])
            count += take
            offset += take
            if count == size:
                yield start, chunk
                start += count
                chunk, count = [], 0
    if chunk:
        yield start, chunk


def _check(parts: Sequence[np.ndarray]) -> int:
    for p in parts:
        assert p.dtype == np.uint8 and p.shape[1:] == IMAGE_SHAPE, (p.dtype, p.shape)
    return sum(len(p) for p in parts)


class EagerRunner:
    """The CPU path: ``DreamSimEmbedder.embed`` over the parts, chunked at ``chunk``."""

    def __init__(self, embedder: DreamSimEmbedder, *, chunk: int) -> None:
        self.embedder = embedder
        self.chunk = chunk

    def run(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        _check(parts)
        # One request: its buffer as is (no copy). Several: one concatenation, here on the
        # worker thread, not on the event loop.
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self.embedder.embed(torch.from_numpy(batch), batch_size=self.chunk).numpy()


Model = Callable[[torch.Tensor], torch.Tensor]
"""The embedder: device uint8 ``[n, 3, 224, 224]`` -> fp32 ``[n, D]``."""


class Ops(Protocol):
    """What the staged path needs from the device (CudaOps; a stand-in in the tests)."""

    device: torch.device

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...
    def device_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...
    def new_stream(self) -> Any: ...
    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]: ...
    def current_stream(self) -> Any: ...
    def new_event(self) -> Any: ...
    def graph_pool(self) -> Any: ...
    def capture(self, fn: Model, x: torch.Tensor, pool: Any) -> tuple[Any, torch.Tensor]: ...
    def empty_cache(self) -> None: ...


class CudaOps:
    """The real device primitives on ``device`` (a CUDA device)."""

    def __init__(self, device: torch.device, *, pinned: bool = True) -> None:
        self.device = device
        self.pinned = pinned

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pinned)

    def device_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def new_stream(self) -> Any:
        return torch.cuda.Stream(self.device)

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def current_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def new_event(self) -> Any:
        return torch.cuda.Event()

    def graph_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def capture(self, fn: Model, x: torch.Tensor, pool: Any) -> tuple[Any, torch.Tensor]:
        """A CUDA graph of ``out = fn(x)``: ``graph.replay()`` recomputes ``out`` from
        whatever ``x`` holds. Two warm-up runs on a side stream first (capture needs
        them; they also load every kernel the shape uses)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(x)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn(x)
        return graph, out

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()


Forward = Callable[[torch.Tensor, int], torch.Tensor]
"""``forward(images, n)``: embeddings of ``images[:n]`` (device uint8), fp32 ``[n, D]``."""


def eager_forward(embedder: Model) -> Forward:
    def forward(images: torch.Tensor, n: int) -> torch.Tensor:
        return embedder(images[:n])
    return forward


class GraphForward:
    """A CUDA graph per bucket, replayed for every batch that fits one.

    Captured largest bucket first into one memory pool (the smaller graphs reuse its
    blocks); capturing runs each bucket three times, which is also its warm-up. A batch
    over the largest bucket runs eagerly. Static buffers: the graph of bucket ``b`` reads
    ``inputs[b]`` and writes ``outputs[b]``; a call copies the batch into the first ``n``
    rows (the others keep earlier images: valid pixels whose rows are dropped) and returns
    a view of the first ``n`` outputs, valid until the next replay of that bucket on the
    same stream (the caller's device-to-host copy is queued before it).
    """

    def __init__(self, embedder: Model, buckets: Sequence[int], ops: Ops) -> None:
        self.embedder = embedder
        self.buckets = tuple(sorted(buckets))
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, Any] = {}
        pool = ops.graph_pool()
        with torch.inference_mode():
            for b in sorted(self.buckets, reverse=True):
                x = ops.device_buffer((b, *IMAGE_SHAPE), torch.uint8)
                self.graphs[b], self.outputs[b] = ops.capture(embedder, x, pool)
                self.inputs[b] = x

    def __call__(self, images: torch.Tensor, n: int) -> torch.Tensor:
        b = bucket_for(n, self.buckets)
        if b is None:
            return self.embedder(images[:n])
        self.inputs[b][:n].copy_(images[:n])
        self.graphs[b].replay()
        return self.outputs[b][:n]


class _Slot:
    def __init__(self, ops: Ops, max_batch: int, dim: int) -> None:
        self.host_in = ops.host_buffer((max_batch, *IMAGE_SHAPE), torch.uint8)
        self.host_in_np = self.host_in.numpy()
        self.dev_in = ops.device_buffer((max_batch, *IMAGE_SHAPE), torch.uint8)
        self.host_out = ops.host_buffer((max_batch, dim), torch.float32)
        self.host_out_np = self.host_out.numpy()
        self.copied = ops.new_event()
        self.done = ops.new_event()


class StagedRunner:
    """The CUDA path: pinned staging slots, copy and compute streams, ``slots`` batches
    in flight (see the module docstring).

    Args:
        forward: the model on device tensors (:class:`GraphForward` or
            :func:`eager_forward`).
        embedder: the model itself (its eager ``embed`` serves a chunk that ran out of
            memory, halving as it goes).
        ops: the device primitives.
        max_batch: images per forward pass (BATCH_SIZE_LIMIT); a larger batch is chunked.
        slots: batches in flight at once (BATCHES_IN_FLIGHT).
    """

    def __init__(self, forward: Forward, embedder: DreamSimEmbedder, *, ops: Ops,
                 max_batch: int, slots: int = 2) -> None:
        assert max_batch >= 1 and slots >= 1
        self.forward = forward
        self.embedder = embedder
        self.ops = ops
        self.max_batch = max_batch
        self.dim = embedder.embedding_dim
        self._slots: SimpleQueue[_Slot] = SimpleQueue()
        for _ in range(slots):
            self._slots.put(_Slot(ops, max_batch, self.dim))
        self._copy_stream = ops.new_stream()
        self._compute_stream = ops.new_stream()
        self._enqueue = threading.Lock()  # the device's queues, in one order

    def run(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        total = _check(parts)
        out = np.empty((total, self.dim), dtype=np.float32)
        slot = self._slots.get()  # blocks while every slot is in flight
        try:
            for start, chunk in split_parts(parts, self.max_batch):
                n = self._fill(slot, chunk)
                try:
                    self._submit(slot, n)
                    slot.done.synchronize()  # outside the lock: the other slot proceeds
                except torch.OutOfMemoryError:
                    out[start : start + n] = self._after_oom(slot, n)
                    continue
                out[start : start + n] = slot.host_out_np[:n]
        finally:
            self._slots.put(slot)
        return out

    @staticmethod
    def _fill(slot: _Slot, chunk: list[np.ndarray]) -> int:
        """gRPC buffers -> the slot's pinned buffer: the one host copy of the images."""
        n = 0
        for piece in chunk:
            slot.host_in_np[n : n + len(piece)] = piece
            n += len(piece)
        return n

    def _submit(self, slot: _Slot, n: int) -> None:
        ops = self.ops
        with self._enqueue, torch.inference_mode():
            with ops.stream(self._copy_stream):
                slot.dev_in[:n].copy_(slot.host_in[:n], non_blocking=True)
                slot.copied.record(self._copy_stream)
            self._compute_stream.wait_event(slot.copied)
            with ops.stream(self._compute_stream):
                emb = self.forward(slot.dev_in, n)
                slot.host_out[:n].copy_(emb, non_blocking=True)
                slot.done.record(self._compute_stream)

    def _after_oom(self, slot: _Slot, n: int) -> np.ndarray:
        self._compute_stream.synchronize()
        self.ops.empty_cache()
        log.warning("out of memory on %s at %d images; running this chunk eagerly in "
                    "halves", self.ops.device, n)
        images = torch.from_numpy(slot.host_in_np[:n].copy())
        return self.embedder.embed(images, batch_size=max(1, n // 2)).numpy()
