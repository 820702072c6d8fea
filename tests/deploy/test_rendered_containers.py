"""The containers of the rendered InferenceService really start and answer correctly.

Takes command, args and env of the predictor and the transformer from ``helm template``
with the default values (the GPU deployment), changes only what the cluster provides
(ports on loopback, the weights mount, the device, the --predictor_host's Service name),
starts both as processes and asks /similarity.
"""

from __future__ import annotations

import base64
import io
import math
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from testing.procs import free_port, running, wait_http_ok
from tests.deploy.render import arg_value, container, env_of, one, render


def _set_arg(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced, or the pair appended when absent."""
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def _local_cmd(c: dict[str, Any]) -> list[str]:
    command = list(c["command"])
    assert command[0] == "python", command
    return [sys.executable, *command[1:], *c["args"]]


def _png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_rendered_containers_serve(dino_weights_dir: Path, tmp_path: Path) -> None:
    isvc = one(render(), "InferenceService")
    pred, tr = container(isvc, "predictor"), container(isvc, "transformer")
    http_p, grpc_p, http_t = free_port(), free_port(), free_port()

    # The chart passes --predictor_host <name>-predictor.<namespace>:8081, the predictor's
    # gRPC port, which KServe's Service exposes as itself (not the first port: that one is 80).
    grpc_rendered = arg_value(pred["args"], "--grpc_port")
    assert (arg_value(tr["args"], "--predictor_host") or "").endswith(f":{grpc_rendered}")
    assert [p["containerPort"] for p in pred["ports"]][1:] == [int(grpc_rendered or 0)]
    pred = {**pred, "args": _set_arg(_set_arg(pred["args"], "--http_port", str(http_p)),
                                     "--grpc_port", str(grpc_p))}
    tr = {**tr, "args": _set_arg(_set_arg(tr["args"], "--http_port", str(http_t)),
                                 "--predictor_host", f"127.0.0.1:{grpc_p}")}
    pred_env = {**env_of(pred), "DEVICE": "cpu", "MODEL_CACHE_DIR": str(dino_weights_dir),
                "HOME": str(tmp_path)}
    tr_env = {**env_of(tr), "HOME": str(tmp_path)}

    p_log, t_log = tmp_path / "predictor.log", tmp_path / "transformer.log"
    with running(_local_cmd(pred), env=pred_env, log_path=p_log) as p_proc, \
            running(_local_cmd(tr), env=tr_env, log_path=t_log) as t_proc:
        # The probes of the rendered spec, on loopback.
        ready = pred["readinessProbe"]["httpGet"]["path"]
        wait_http_ok(f"http://127.0.0.1:{http_p}{ready}", timeout_s=300, proc=p_proc,
                     log_path=p_log)
        wait_http_ok(f"http://127.0.0.1:{http_p}/v2/models/dreamsim/ready", timeout_s=10,
                     proc=p_proc, log_path=p_log)
        base = f"http://127.0.0.1:{http_t}"
        wait_http_ok(base + tr["readinessProbe"]["httpGet"]["path"], timeout_s=120,
                     proc=t_proc, log_path=t_log)
        wait_http_ok(base + tr["livenessProbe"]["httpGet"]["path"], timeout_s=10, proc=t_proc,
                     log_path=t_log)
        health = httpx.get(base + "/health", timeout=10).json()
        assert health["model_loaded"] is True and health["device"] == "cpu", health
        assert health["model_type"] == env_of(pred)["MODEL_TYPE"]

        rng = np.random.default_rng(0)
        a = _png(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
        b = _png(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        r = httpx.post(base + "/similarity", timeout=120, json={"pairs": [
            {"reference_image": a, "generated_image": a, "pair_id": "same"},
            {"reference_image": a, "generated_image": b},
        ]})
        assert r.status_code == 200, r.text
        scores = r.json()["scores"]
        assert [s.get("pair_id") for s in scores] == ["same", None]
        for s in scores:
            assert math.isfinite(s["distance"]), s
            assert s["similarity"] == pytest.approx(1 / (1 + s["distance"]), abs=1e-6)
        assert scores[0]["distance"] == pytest.approx(0.0, abs=1e-4)
        assert scores[1]["distance"] > 1e-4
