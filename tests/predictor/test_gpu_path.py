"""The CUDA path's logic, on the CPU: device checks, float policy, fatal errors, buckets and
CUDA graphs, pinned staging with two batches in flight, the fold of the normalisation.

There is no GPU here. Where a test needs one, ``torch.cuda`` is stubbed (``monkeypatch``)
or the device primitives are :class:`FakeGpuOps`, which stands in for a GPU: buffers
are CPU tensors, streams and events do nothing (CPU copies are synchronous, so every
ordering they would enforce holds trivially), and a "graph" replays by recomputing its
captured function on its static input, as a CUDA graph does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from predictor.batching import MicroBatcher
from predictor.device import (
    DeviceError,
    attention_backend,
    driver_version,
    is_fatal_device_error,
    precision_policy,
    resolve_device,
)
from predictor.model import normalize_embedding
from predictor.runner import (
    EagerRunner,
    GraphForward,
    StagedRunner,
    bucket_for,
    bucket_sizes,
    eager_forward,
    split_parts,
)
from predictor.vit import ViT, merge_heads
from testing.procs import REPO_ROOT, predictor_cmd

# --- device resolution -----------------------------------------------------------------


def test_without_a_gpu_and_without_fallback_the_error_names_both_drivers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda", fallback=False, driver=lambda: "550.54.15")
    msg = str(err.value)
    assert "DEVICE=cuda but no usable GPU" in msg
    assert "driver found: 550.54.15" in msg
    assert "needed: >= 580" in msg and "CUDA 13" in msg  # torch 2.14's cu130 build
    assert "DEVICE_FALLBACK" in msg


def test_without_a_gpu_the_fallback_runs_on_cpu_and_says_why(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="predictor.device"):
        assert resolve_device("cuda:0", fallback=True, driver=lambda: None) == torch.device("cpu")
    assert "driver found: none" in caplog.text and "running on CPU" in caplog.text


def test_cuda_index_is_checked_against_the_gpu_count_and_made_current(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda stubbed: it stands in for a machine with two GPUs."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert resolve_device("cuda:1", fallback=False) == torch.device("cuda", 1)
    assert resolve_device("cuda", fallback=False) == torch.device("cuda", 0)
    assert chosen == [1, 0]
    with pytest.raises(DeviceError, match=r"cuda:2 but this machine has 2 GPUs \(cuda:0 .. "
                                          r"cuda:1\)"):
        resolve_device("cuda:2", fallback=True)  # a wrong index is never "fallen back"
    assert chosen == [1, 0]


def test_driver_version_is_read_from_the_kernel_module(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  "
                    "Release Build  (dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 07:09:24 UTC 2025\n"
                    "GCC version:  gcc version 13.3.0\n")
    assert driver_version(proc) == "580.65.06"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar 5\n")
    assert driver_version(proc) == "550.54.15"


def test_a_gpu_image_without_a_gpu_exits_with_the_driver_line(tmp_path: Path) -> None:
    """The predictor image's setting (DEVICE_FALLBACK=false) on this GPU-less machine: exit
    code 2 and one clear line, no traceback, before any weights are read."""
    dockerfile = (REPO_ROOT / "Dockerfile.predictor").read_text()
    assert "DEVICE_FALLBACK=false" in dockerfile
    proc = subprocess.run(
        predictor_cmd(0, 0),
        cwd=REPO_ROOT, env={"MODEL_CACHE_DIR": str(tmp_path), "DEVICE": "cuda",
                            "DEVICE_FALLBACK": "false", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no usable GPU" in proc.stderr and "needed: >= 580" in proc.stderr
    assert "driver found: none" in proc.stderr  # this machine has no NVIDIA driver
    assert "Traceback" not in proc.stderr


# --- float policy, fatal errors, attention -----------------------------------------------


def test_fp32_means_ieee_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        m.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
        torch.set_float32_matmul_precision("high")
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            policy = precision_policy(dtype)
            assert not policy.matmul_tf32 and not policy.cudnn_tf32
            assert policy.float32_matmul_precision == "highest"
            assert not m.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        m.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


def test_every_cuda_error_but_oom_is_fatal() -> None:
    assert is_fatal_device_error(torch.AcceleratorError(
        "CUDA error: an illegal memory access was encountered"))
    assert is_fatal_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_fatal_device_error(RuntimeError(
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`"))
    assert not is_fatal_device_error(torch.OutOfMemoryError("CUDA out of memory."))
    assert not is_fatal_device_error(RuntimeError("expected uint8 [N, 3, H, W]"))
    assert not is_fatal_device_error(ValueError("CUDA error"))


def test_attention_backend_is_probed_on_the_model_layout() -> None:
    assert attention_backend(torch.device("cpu"), torch.float32) in ("flash", "math")


def test_merging_heads_moves_no_data() -> None:
    """SDPA on head-transposed views of one qkv projection returns token-major memory, so
    the per-block transpose().reshape() is a view, not a copy (CPU kernels here; CUDA's
    flash and memory-efficient kernels return the same layout)."""
    b, n, h, hd = 2, 197, 12, 64
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(b, n, 3, h, hd).to(dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        merged = merge_heads(out)
        assert merged.shape == (b, n, h * hd)
        assert merged.data_ptr() == out.data_ptr() and merged.is_contiguous(), dtype
        assert torch.equal(merged, out.transpose(1, 2).contiguous().view(b, n, h * hd))


# --- the fold of the input normalisation --------------------------------------------------

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _tiny_vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    vit = ViT(feature="cls", eps=1e-6, quick_gelu=False, mean=MEAN, std=STD, embed_dim=48,
              depth=2, num_heads=4)
    for p in vit.parameters():
        nn.init.normal_(p, std=0.2)
    return vit.eval()


def test_folded_normalisation_equals_the_fp32_passes() -> None:
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    vit = _tiny_vit()
    with torch.no_grad():
        reference = vit(images).double()
        vit.fold_input_normalization(MEAN, STD)
        folded = vit(images).double()
    assert vit.input_folded
    scale = float(reference.abs().max())
    assert float((folded - reference).abs().max()) < 1e-5 * scale


def test_a_bf16_model_normalises_with_the_exact_fp32_constants(dino_weights_dir: Path) -> None:
    """The mean/std are not rounded to the model's dtype (bf16 0.485 -> 0.484375) and the
    folded patch embedding stays fp32."""
    from predictor.model import load_model

    for fold in (False, True):
        model = load_model(cache_dir=dino_weights_dir, variant="dino_vitb16", device="cpu",
                           precision="bf16", fold_input=fold)
        (vit,) = model.embedder.backbones
        assert isinstance(vit, ViT) and vit.input_folded is fold
        assert vit.mean.dtype == torch.float32
        assert vit.mean.flatten().tolist() == torch.tensor(MEAN, dtype=torch.float32).tolist()
        assert vit.std.flatten().tolist() == torch.tensor(STD, dtype=torch.float32).tolist()
        assert vit.cls_token.dtype == torch.bfloat16
        assert vit.patch_embed.proj.weight.dtype == (torch.float32 if fold else torch.bfloat16)


# --- buckets, graphs, staging ---------------------------------------------------------------


def test_buckets_cover_every_size_up_to_the_limit() -> None:
    assert bucket_sizes(64) == (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(100) == (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 100)
    for limit in (1, 3, 16, 60, 64, 256):
        buckets = bucket_sizes(limit)
        assert buckets[-1] == limit and list(buckets) == sorted(set(buckets))
        for n in range(1, limit + 1):
            b = bucket_for(n, buckets)
            assert b is not None and n <= b and (n <= 8 or b <= 1.5 * n + 1), (limit, n, b)
        assert bucket_for(limit + 1, buckets) is None


def test_split_parts_keeps_order_and_copies_nothing() -> None:
    parts = [np.arange(n * 2).reshape(n, 2) + 100 * i for i, n in enumerate([3, 2, 6])]
    chunks = list(split_parts(parts, 4))
    assert [start for start, _ in chunks] == [0, 4, 8]
    assert [sum(len(c) for c in chunk) for _, chunk in chunks] == [4, 4, 3]
    joined = np.concatenate([np.concatenate(chunk) for _, chunk in chunks])
    assert np.array_equal(joined, np.concatenate(parts))
    assert all(np.shares_memory(piece, parts[0]) or np.shares_memory(piece, parts[1])
               or np.shares_memory(piece, parts[2]) for _, chunk in chunks for piece in chunk)


class FakeGraph:
    """Stands in for a CUDA graph: replay recomputes ``out`` from the static input."""

    def __init__(self, fn: Any, x: torch.Tensor, out: torch.Tensor) -> None:
        self.fn, self.x, self.out = fn, x, out
        self.replays = 0

    def replay(self) -> None:
        self.out.copy_(self.fn(self.x))
        self.replays += 1


class FakeStream:
    def wait_event(self, event: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


class FakeEvent:
    def record(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class FakeGpuOps:
    """Stands in for a GPU (there is none here): CPU buffers, no-op streams and events,
    graphs that replay by recomputation. Counts what the staged path asks for."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.host_buffers = 0
        self.captured: list[int] = []

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        self.host_buffers += 1
        return torch.empty(shape, dtype=dtype)

    def device_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype)

    def new_stream(self) -> FakeStream:
        return FakeStream()

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def current_stream(self) -> FakeStream:
        return FakeStream()

    def new_event(self) -> FakeEvent:
        return FakeEvent()

    def graph_pool(self) -> None:
        return None

    def capture(self, fn: Any, x: torch.Tensor, pool: Any) -> tuple[FakeGraph, torch.Tensor]:
        self.captured.append(len(x))
        out = fn(x).clone()
        return FakeGraph(fn, x, out), out

    def empty_cache(self) -> None:
        pass


class TinyEmbedder(nn.Module):
    """A 2-block ViT with DreamSim's normalised CLS output: the real model's code paths
    (folded patch embedding, SDPA, CLS-only last block) at a fraction of the cost."""

    embedding_dim = 48

    def __init__(self) -> None:
        super().__init__()
        self.vit = _tiny_vit(seed=3)
        self.vit.fold_input_normalization(MEAN, STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_embedding(self.vit(images).float())

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, *, batch_size: int) -> torch.Tensor:
        return torch.cat([self(images[i:i + batch_size])
                          for i in range(0, len(images), batch_size)])


@pytest.fixture(scope="module")
def tiny() -> TinyEmbedder:
    return TinyEmbedder().eval()


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)


def _eager(tiny: TinyEmbedder, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([tiny(torch.from_numpy(images[i:i + 1])).numpy()
                               for i in range(len(images))])


def test_padded_buckets_give_the_unpadded_embeddings(tiny: TinyEmbedder) -> None:
    ops = FakeGpuOps()
    buckets = bucket_sizes(8)
    graphs = GraphForward(tiny, buckets, ops)
    assert ops.captured == [8, 4, 2, 1]  # largest first, one pool
    first, second = _images(8, seed=1), _images(3, seed=2)
    with torch.inference_mode():
        full = graphs(torch.from_numpy(first), 8).clone()
        # 3 images in bucket 4: row 3 still holds an image of the earlier batch
        padded = graphs(torch.from_numpy(second), 3).clone()
        over = graphs(torch.from_numpy(np.concatenate([first, second])), 11)  # eager
    assert padded.shape == (3, 48)
    assert graphs.graphs[4].replays == 1 and graphs.graphs[8].replays == 1
    assert np.abs(padded.numpy() - _eager(tiny, second)).max() < 1e-5
    assert np.abs(full.numpy() - _eager(tiny, first)).max() < 1e-5
    assert np.abs(over.numpy()[8:] - _eager(tiny, second)).max() < 1e-5


def test_staged_runner_returns_every_row_in_order(tiny: TinyEmbedder) -> None:
    ops = FakeGpuOps()
    staged = StagedRunner(GraphForward(tiny, bucket_sizes(4), ops), tiny,  # type: ignore[arg-type]
                          ops=ops, max_batch=4, slots=2)
    assert ops.host_buffers == 4  # pinned input and output buffers of two slots
    parts = [_images(3, 5), _images(2, 6), _images(6, 7)]
    parts[0].setflags(write=False)  # gRPC's buffers are read-only
    got = staged.run(parts)
    expected = _eager(tiny, np.concatenate(parts))
    assert got.shape == (11, 48) and np.abs(got - expected).max() < 1e-5
    eager = EagerRunner(tiny, chunk=4)  # type: ignore[arg-type]
    assert np.abs(eager.run(parts) - expected).max() < 1e-5


class _Timeline:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def add(self, what: str, who: int) -> None:
        with self.lock:
            self.events.append((what, who))


def _timed_runner(tiny: TinyEmbedder, slots: int, monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[StagedRunner, _Timeline]:
    timeline = _Timeline()
    forward = eager_forward(tiny)

    def slow_forward(images: torch.Tensor, n: int) -> torch.Tensor:
        who = int(images[0, 0, 0, 0])
        timeline.add("compute-start", who)
        time.sleep(0.3)  # the GPU busy with this batch
        out = forward(images, n)
        timeline.add("compute-end", who)
        return out

    real_fill = StagedRunner._fill

    def fill(slot: Any, chunk: list[np.ndarray]) -> int:
        n = real_fill(slot, chunk)
        timeline.add("staged", int(chunk[0][0, 0, 0, 0]))
        return n

    monkeypatch.setattr(StagedRunner, "_fill", staticmethod(fill))
    ops = FakeGpuOps()
    return StagedRunner(slow_forward, tiny, ops=ops, max_batch=4,  # type: ignore[arg-type]
                        slots=slots), timeline


def _two_batches(staged: StagedRunner) -> list[np.ndarray]:
    batches = [np.full((2, 3, 224, 224), who, dtype=np.uint8) for who in (1, 2)]
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = staged.run([batches[i]])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    threads[0].start()
    time.sleep(0.1)  # batch 1 is computing now
    threads[1].start()
    for t in threads:
        t.join(30)
    return [results[0], results[1]]


def test_two_batches_in_flight_stage_the_next_during_the_compute(
        tiny: TinyEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    staged, timeline = _timed_runner(tiny, slots=2, monkeypatch=monkeypatch)
    out = _two_batches(staged)
    ev = timeline.events
    # batch 2 was copied into its staging slot while batch 1 was still computing
    assert ev.index(("staged", 2)) < ev.index(("compute-end", 1)), ev
    assert ev.index(("compute-end", 1)) < ev.index(("compute-start", 2)), ev  # device order
    for who, rows in zip((1, 2), out, strict=True):
        expected = _eager(tiny, np.full((2, 3, 224, 224), who, dtype=np.uint8))
        assert np.abs(rows - expected).max() < 1e-5


def test_one_slot_stages_after_the_previous_batch(
        tiny: TinyEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    staged, timeline = _timed_runner(tiny, slots=1, monkeypatch=monkeypatch)
    _two_batches(staged)
    ev = timeline.events
    assert ev.index(("compute-end", 1)) < ev.index(("staged", 2)), ev


def test_micro_batcher_keeps_two_runs_in_flight() -> None:
    """With max_in_flight=2 a second batch starts while the first runs (a barrier of two
    that only passes then); every request still gets its own rows."""
    barrier = threading.Barrier(2, timeout=10)
    concurrent = {"now": 0, "max": 0}
    lock = threading.Lock()

    def run(parts: list[np.ndarray]) -> np.ndarray:
        with lock:
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
        barrier.wait()
        with lock:
            concurrent["now"] -= 1
        return np.concatenate(parts)[:, 0, 0, :1].astype(np.float32)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(run, max_images=2, max_wait_s=0.01, max_in_flight=2)
        return await asyncio.gather(*(batcher.embed(np.full((2, 3, 4, 4), tag, np.uint8))
                                      for tag in (1, 2)))

    results = asyncio.run(main())
    assert concurrent["max"] == 2
    assert [int(r[0, 0]) for r in results] == [1, 2]


# --- the server on a sticky device error ------------------------------------------------------


def test_a_sticky_cuda_error_makes_the_predictor_unready_and_exit() -> None:
    from kserve import InferInput, InferRequest
    from kserve.errors import ServerNotReady

    from predictor.server import FATAL_EXIT_CODE, DreamSimPredictor
    from predictor.settings import PredictorSettings

    exits: list[int] = []
    errors: list[BaseException] = [torch.OutOfMemoryError("CUDA out of memory"),
                                   torch.AcceleratorError("CUDA error: an illegal memory "
                                                          "access was encountered")]

    class Failing:
        """Stands in for the GPU runner: fails as a GPU would."""

        def run(self, parts: list[np.ndarray]) -> np.ndarray:
            raise errors.pop(0)

    model = DreamSimPredictor("dreamsim", PredictorSettings(device="cpu"),
                              exit_process=exits.append)
    model.loaded = SimpleNamespace(device=torch.device("cuda", 0))  # type: ignore[assignment]
    model._runner = Failing()  # type: ignore[assignment]
    model._batcher = MicroBatcher(model._embed, max_images=8, max_wait_s=0)
    model.ready = True

    def request() -> InferRequest:
        tensor = InferInput(name="image", shape=[1, 3, 224, 224], datatype="UINT8")
        tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.uint8), binary_data=True)
        return InferRequest(model_name="dreamsim", infer_inputs=[tensor])

    async def main() -> None:
        with pytest.raises(torch.OutOfMemoryError):
            await model.predict(request())
        assert model.ready and not exits  # out of memory is not sticky
        with pytest.raises(torch.AcceleratorError):
            await model.predict(request())
        assert not model.ready and not await model.healthy()
        assert exits == [FATAL_EXIT_CODE]
        with pytest.raises(ServerNotReady, match="illegal memory access"):
            await model.predict(request())  # refused at once until the restart

    asyncio.run(main())


# --- the server's CUDA glue, on the stand-in ---------------------------------------------------


def _cuda_predictor(monkeypatch: pytest.MonkeyPatch, tiny: TinyEmbedder, *, capture_fails: bool
                    ) -> Any:
    """A DreamSimPredictor whose loaded model claims cuda:0 (torch.cuda stubbed: it stands
    in for a GPU named "Stand-in GPU") and whose device primitives are FakeGpuOps."""
    from predictor import server
    from predictor.settings import PredictorSettings

    monkeypatch.setattr(server, "CudaOps", lambda device: FakeGpuOps())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU")
    if capture_fails:
        def failing(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("operation not permitted when stream is capturing")
        monkeypatch.setattr(server, "GraphForward", failing)
    model = server.DreamSimPredictor("dreamsim", PredictorSettings(batch_size_limit=8))
    model.loaded = SimpleNamespace(  # type: ignore[assignment]
        device=torch.device("cuda", 0), embedder=tiny, attention="flash",
        dtype=torch.float16)
    return model


@pytest.mark.parametrize("capture_fails", [False, True])
def test_cuda_runner_uses_graphs_or_falls_back_to_eager_and_warms_every_bucket(
        tiny: TinyEmbedder, monkeypatch: pytest.MonkeyPatch, capture_fails: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    model = _cuda_predictor(monkeypatch, tiny, capture_fails=capture_fails)
    with caplog.at_level(logging.WARNING, logger="predictor"):
        model._runner = model._make_runner()
    assert isinstance(model._runner, StagedRunner)
    assert model.buckets == (1, 2, 4, 8)
    assert model.graphs is not capture_fails
    assert ("running eagerly" in caplog.text) is capture_fails
    sizes: list[int] = []
    real_run = model._runner.run

    def run(parts: Sequence[np.ndarray]) -> np.ndarray:
        sizes.append(sum(len(p) for p in parts))
        return real_run(parts)

    model._runner.run = run  # type: ignore[method-assign]
    model._warm_up()
    assert sizes == [1, 2, 4, 8]  # every bucket that will be served, through the real path
    parts = [_images(3, 9), _images(6, 10)]  # 9 images: chunks of 8 and 1
    assert np.abs(model._embed(parts) - _eager(tiny, np.concatenate(parts))).max() < 1e-5


def test_describe_on_cuda_names_the_gpu(tiny: TinyEmbedder,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model = _cuda_predictor(monkeypatch, tiny, capture_fails=False)
    model.graphs = True
    info = model.describe()
    assert info["device"] == "cuda" and info["device_index"] == 0
    assert info["gpu_name"] == "Stand-in GPU" and info["attention_backend"] == "flash"
    assert info["precision"] == "fp16" and info["cuda_graphs"] is True


# --- the same on a real GPU (make gpu-check runs these; skipped without CUDA) ---------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_graphs_and_staging_match_eager() -> None:
    """CUDA graphs per bucket, pinned staging and two callers at once on a real GPU give
    the CPU's fp32 embeddings (IEEE fp32 on both: TF32 off)."""
    from predictor.runner import CudaOps

    device = resolve_device("cuda", fallback=False)
    precision_policy(torch.float32)
    cpu_model = TinyEmbedder().eval()
    model = TinyEmbedder().eval().to(device)
    ops = CudaOps(device)
    staged = StagedRunner(GraphForward(model, bucket_sizes(8), ops), model,  # type: ignore[arg-type]
                          ops=ops, max_batch=8, slots=2)
    parts = [_images(3, 11), _images(7, 12)]
    expected = _eager(cpu_model, np.concatenate(parts))
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(staged.run(parts)))
               for _ in range(2)]  # two batches in flight at once
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    for got in results:
        assert np.abs(got - expected).max() < 1e-4
