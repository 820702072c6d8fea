"""The CPU-only profile (charts/.../values-cpu.yaml, manifests/overlays/cpu): no GPU
anywhere, resources, threads and autoscaling that make sense together, and the chart and
the kustomize overlay describe the same deployment. Lint, schema and CRD validation and
checkov cover the profile through ``VALUE_SETS["cpu-profile"]``."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.render import (
    MANIFESTS,
    VALUE_SETS,
    container,
    env_of,
    namespace_free,
    one,
    render,
)

OVERLAY = MANIFESTS.parent / "overlays" / "cpu"


def _isvc() -> dict[str, Any]:
    return one(render(VALUE_SETS["cpu-profile"]), "InferenceService")


def _all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_no_gpu_is_asked_for_or_tolerated() -> None:
    isvc = _isvc()
    for component in ("predictor", "transformer"):
        spec = isvc["spec"][component]
        for c in _all_containers(spec):
            for part in ("requests", "limits"):
                assert not [k for k in c.get("resources", {}).get(part, {}) if "gpu" in k], c
        assert not [t for t in spec.get("tolerations", []) if "gpu" in t.get("key", "")]
    env = env_of(container(isvc, "predictor"))
    assert env["DEVICE"] == "cpu"


def test_threads_follow_a_guaranteed_whole_cpu_limit() -> None:
    """Requests equal limits in whole CPUs (a Guaranteed pod the static CPU manager can
    pin), and nothing overrides the predictor's threads, which then follow the limit."""
    c = container(_isvc(), "predictor")
    res = c["resources"]
    assert res["requests"] == res["limits"], res
    assert str(res["limits"]["cpu"]).isdigit(), res
    env = env_of(c)
    assert "TORCH_THREADS" not in env and "OMP_NUM_THREADS" not in env, env
    assert env["PRECISION"] == "fp32" and env["CPU_BATCH_SIZE"] == "16", env


def test_autoscaling_on_cpu_with_room_to_scale() -> None:
    isvc = _isvc()
    for component in ("predictor", "transformer"):
        spec = isvc["spec"][component]
        assert spec["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa", component
        assert spec["scaleMetric"] == "cpu" and 0 < spec["scaleTarget"] < 100, component
        assert spec["minReplicas"] < spec["maxReplicas"], component
    pred = isvc["spec"]["predictor"]
    # CPU pods may surge; replicas stay on the node of the ReadWriteOnce weights volume.
    assert pred["deploymentStrategy"]["type"] == "RollingUpdate"
    (rule,) = pred["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert rule["labelSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_the_overlay_is_the_chart_profile() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    plain = one([d for d in yaml.safe_load_all(out) if d], "InferenceService")
    chart = _isvc()
    for component in ("predictor", "transformer"):
        c = namespace_free(chart["spec"][component])
        c.pop("serviceAccountName")  # the chart's own ServiceAccount
        assert c == plain["spec"][component], component
