"""The predictor process: gRPC v2 raw tensors, REST v2, message limits, start-up errors."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from testing.procs import (
    REPO_ROOT,
    Predictor,
    free_port,
    predictor_cmd,
    run_predictor,
    running,
    wait_http_ok,
)
from testing.tcp_balancer import TcpBalancer
from transformer.predictor_client import PredictorClient

pytestmark = pytest.mark.slow


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)


async def _grpc_infer(host: str, array: np.ndarray, datatype: str = "UINT8") -> np.ndarray:
    tensor = InferInput(name="image", shape=list(array.shape), datatype=datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    async with InferenceGRPCClient(host, timeout=120, retries=0) as client:
        response = await client.infer(InferRequest(model_name="dreamsim", infer_inputs=[tensor]))
    return response.outputs[0].as_numpy()


def test_grpc_raw_and_rest_v2_agree(predictor_server: Predictor) -> None:
    images = _images(3)
    over_grpc = asyncio.run(_grpc_infer(predictor_server.grpc, images))
    assert over_grpc.shape == (3, 768) and over_grpc.dtype == np.float32
    # Normalised as DreamSim normalises: zero mean over features, unit L2 norm.
    assert np.allclose(over_grpc.mean(axis=1), 0, atol=1e-6)
    assert np.allclose(np.linalg.norm(over_grpc, axis=1), 1, atol=1e-5)

    body = {"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "UINT8",
                        "data": images[:1].ravel().tolist()}]}
    r = httpx.post(f"{predictor_server.http}/v2/models/dreamsim/infer", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 768]
    assert np.allclose(np.array(out["data"], dtype=np.float32), over_grpc[0], atol=1e-6)


def test_bad_tensors_are_invalid_argument(predictor_server: Predictor) -> None:
    for array, datatype in ((np.zeros((1, 3, 224, 224), np.float32), "FP32"),
                            (np.zeros((1, 3, 32, 32), np.uint8), "UINT8")):
        with pytest.raises(grpc.RpcError) as err:
            asyncio.run(_grpc_infer(predictor_server.grpc, array, datatype))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UINT8 [N, 3, 224, 224]" in str(err.value.details())


def test_largest_request_fits_the_grpc_message_limit(predictor_server: Predictor) -> None:
    # 2 x MAX_PAIRS_PER_REQUEST images (38.5 MB, over gRPC's 8 MiB default) with a slightly
    # wrong shape: it must reach our validation (INVALID_ARGUMENT), not die on
    # RESOURCE_EXHAUSTED, and without running the model on 256 images.
    array = np.zeros((256, 3, 224, 225), np.uint8)
    with pytest.raises(grpc.RpcError) as err:
        asyncio.run(_grpc_infer(predictor_server.grpc, array))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata_and_readiness(predictor_server: Predictor) -> None:
    meta = httpx.get(f"{predictor_server.http}/v2/models/dreamsim", timeout=10).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 768]}]
    ready = httpx.get(f"{predictor_server.http}/v2/health/ready", timeout=10)
    assert ready.status_code == 200


def test_missing_weights_stop_the_predictor_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        predictor_cmd(0, 0),
        cwd=REPO_ROOT, env={"MODEL_CACHE_DIR": str(tmp_path), "DEVICE": "cpu",
                            "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing checkpoints/dino_vitbase16_pretrain.pth" in proc.stderr
    assert "python -m predictor.weights --model-type dino_vitb16" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_configuration_stops_the_predictor(tmp_path: Path) -> None:
    proc = subprocess.run(predictor_cmd(0, 0), cwd=REPO_ROOT,
                          env={"PRECISION": "fp8", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "precision" in proc.stderr.lower() and "Traceback" not in proc.stderr


def _batch_totals(http: str) -> tuple[float, float]:
    text = httpx.get(f"{http}/metrics", timeout=10).text
    values = dict(re.findall(r"^dreamsim_batch_images_(sum|count) ([0-9.e+]+)$", text,
                             re.MULTILINE))
    return float(values.get("sum", 0)), float(values.get("count", 0))


@pytest.mark.parametrize("combine", ["true", "auto"])
def test_concurrent_requests_share_forward_passes_when_asked(
        combine: str, dino_weights_dir: Path, tmp_path: Path) -> None:
    """4 concurrent single-image requests: one forward pass of 4 with
    BATCH_ACROSS_REQUESTS=true, 4 passes with auto on CPU; the same answers either way."""
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu",
           "BATCH_ACROSS_REQUESTS": combine, "BATCH_MAX_WAIT_MS": "1000"}
    log = tmp_path / "predictor.log"
    images = _images(4, seed=5)
    with run_predictor(env, log) as predictor:
        http, host = predictor.http, predictor.grpc
        alone = np.concatenate([asyncio.run(_grpc_infer(host, images[i:i + 1]))
                                for i in range(4)])
        before = _batch_totals(http)

        async def together() -> list[np.ndarray]:
            return await asyncio.gather(*(_grpc_infer(host, images[i:i + 1]) for i in range(4)))

        shared = np.concatenate(asyncio.run(together()))
        after = _batch_totals(http)
    assert np.allclose(shared, alone, atol=1e-5)  # each request got its own rows back
    images_run, passes = after[0] - before[0], after[1] - before[1]
    assert images_run == 4
    assert passes == (1 if combine == "true" else 4)
    assert f"batching across requests {'on' if combine == 'true' else 'off'}" in log.read_text()


@pytest.fixture(scope="module")
def tuned_predictor(dino_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[Predictor]:
    """A predictor that ends gRPC connections after 1 s (calls in flight may take 120 s
    more: one image takes seconds on a busy 2-core machine), logging JSON at DEBUG."""
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu",
           "GRPC_MAX_CONNECTION_AGE": "1", "GRPC_MAX_CONNECTION_AGE_GRACE": "120",
           "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    with run_predictor(env, tmp_path_factory.mktemp("tuned") / "predictor.log") as predictor:
        yield predictor


def test_connections_end_after_the_maximum_age(tuned_predictor: Predictor) -> None:
    """GRPC_MAX_CONNECTION_AGE: the client is sent away and reconnects (through a balancer
    that would deal it to another replica), and no call fails on the way."""
    balancer = TcpBalancer([tuned_predictor.grpc])

    async def calls(address: str) -> int:
        client = PredictorClient(address, model_name="dreamsim", timeout_s=60)
        done, deadline = 0, time.monotonic() + 4
        while time.monotonic() < deadline:
            await client.describe(timeout_s=10)  # an empty batch: no model run
            done += 1
            await asyncio.sleep(0.02)
        embeddings = await client.embed(_images(1))  # a model run, on a fresh connection
        await client.close()
        assert embeddings.vectors.shape == (1, 768)
        return done

    with balancer.serving() as address:
        done = asyncio.run(calls(address))
    assert done > 20
    # 4 s of calls on connections ended after 1 s (+-10%): at least three connections.
    assert balancer.connections[0] >= 3, balancer.connections


def test_no_line_per_call_at_info(predictor_server: Predictor) -> None:
    """KServe logged every gRPC call (``grpc method``) and every request twice
    (``kserve.trace``) at INFO, probes included; now only start-up and problems are INFO."""
    asyncio.run(_grpc_infer(predictor_server.grpc, _images(1)))
    httpx.get(f"{predictor_server.http}/v2/health/ready", timeout=10)
    text = predictor_server.log.read_text()
    assert "serving model 'dreamsim'" in text  # start-up is still logged
    for chatter in ("grpc method", "kserve.trace", "uvicorn.access", "infer id=", "/ready"):
        assert chatter not in text, (chatter, [x for x in text.splitlines() if chatter in x])


def test_json_log_with_a_debug_line_per_call(tuned_predictor: Predictor) -> None:
    async def call() -> None:
        client = PredictorClient(tuned_predictor.grpc, model_name="dreamsim", timeout_s=60)
        await client.embed(np.zeros((0, 3, 224, 224), np.uint8), request_id="trace-me-1")
        await client.close()

    asyncio.run(call())
    records = [json.loads(line) for line in tuned_predictor.log.read_text().splitlines()
               if line.strip()]  # every line is one JSON object
    calls = [r for r in records if r.get("request_id") == "trace-me-1"]
    assert len(calls) == 1 and calls[0]["level"] == "DEBUG" and calls[0]["images"] == 0
    assert any(r["level"] == "INFO" and "serving model" in r["message"] for r in records)


def test_a_patch_variant_is_served_and_reported(tmp_path: Path) -> None:
    """MODEL_TYPE=dinov2_vitb14_patch end to end: the predictor serves 1536-d unit
    embeddings (its metadata says so) and the transformer's /health names the variant.
    The other variants differ only in what tests/predictor/test_fidelity.py checks."""
    from testing.checkpoints import cached_upstream_cache
    from tests.conftest import start_transformer
    from tests.predictor.test_fidelity import VARIANT_SEED

    variant = "dinov2_vitb14_patch"
    cache = cached_upstream_cache(variant, seed=VARIANT_SEED)  # test_fidelity's checkpoint
    env = {"MODEL_CACHE_DIR": str(cache), "DEVICE": "cpu", "MODEL_TYPE": variant}
    with run_predictor(env, tmp_path / "predictor.log", timeout_s=300) as predictor:
        meta = httpx.get(f"{predictor.http}/v2/models/dreamsim", timeout=10).json()
        assert meta["outputs"][0]["shape"] == [-1, 1536]
        host = predictor.grpc
        out = asyncio.run(_grpc_infer(host, _images(2)))
        assert out.shape == (2, 1536)
        assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
        with start_transformer(host, tmp_path / "transformer.log") as url:
            health = httpx.get(f"{url}/health", timeout=30).json()
    assert health["model_type"] == variant


def test_a_second_predictor_on_a_grpc_port_in_use_stops_at_start(
        predictor_server: Predictor, dino_weights_dir: Path, tmp_path: Path) -> None:
    """gRPC sets SO_REUSEPORT by default: before, a second predictor on the same gRPC port
    started without a word and the kernel gave it half of the new connections."""
    grpc_port = predictor_server.grpc.rsplit(":", 1)[1]
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu",
           "MODEL_TYPE": "dino_vitb16"}
    log = tmp_path / "second.log"
    http_port = free_port()
    with running(predictor_cmd(http_port, grpc_port), env=env, log_path=log) as second:
        # It exits, or it gets as far as serving (the old behaviour): then the test fails.
        with pytest.raises(RuntimeError, match="process exited with 2"):
            wait_http_ok(f"http://127.0.0.1:{http_port}/v2/models/dreamsim/ready",
                         timeout_s=180, proc=second)
        text = log.read_text(errors="replace")
    assert f"gRPC port {grpc_port} is in use" in text
    assert "Traceback" not in text
    # The first one still serves, alone on its port.
    with grpc.insecure_channel(predictor_server.grpc) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    assert httpx.get(f"{predictor_server.http}/v2/models/dreamsim/ready", timeout=10
                     ).status_code == 200
