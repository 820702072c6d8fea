"""End-to-end on a kind cluster with KServe in Standard mode (run by `make kind-test`).

scripts/kind_test.sh creates the cluster, installs cert-manager, ingress-nginx and KServe,
builds and loads both images, then runs this module with KIND_CLUSTER set. The fixture
copies the random test weights into a PVC, installs the chart with values-kind.yaml, waits
for the InferenceService to be Ready and the tests go through the Ingress. Everything
skips, with the reason, where docker, kind or the cluster are missing (as in CI).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.deploy.render import CHART, helm

CLUSTER = os.environ.get("KIND_CLUSTER", "")
NAMESPACE = os.environ.get("KIND_NAMESPACE", "dreamsim-e2e")
ROUTE_URL = os.environ.get("KIND_ROUTE_URL", "http://127.0.0.1:8088")
RELEASE = "similarity"
CLAIM = "dreamsim-test-weights"
VALUES = Path(__file__).with_name("values-kind.yaml")


def _missing() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine (`docker info` fails)"
    if not CLUSTER:
        return "KIND_CLUSTER is not set: run `make kind-test`"
    clusters = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True,
                              timeout=30).stdout.split()
    if CLUSTER not in clusters:
        return f"kind cluster {CLUSTER!r} does not exist: run `make kind-test`"
    return None


SKIP_REASON = _missing()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(SKIP_REASON is not None,
                       reason=f"cluster tests need docker, kind and a kind cluster: {SKIP_REASON}"),
]


def kubectl(*args: str, input: str | None = None, timeout: float = 300) -> str:
    cmd = ["kubectl", "--context", f"kind-{CLUSTER}", *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _copy_weights(weights: Path) -> None:
    """A PVC holding ``weights`` under dreamsim/, via a helper pod and kubectl cp."""
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": CLAIM, "namespace": NAMESPACE},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {
               "storage": "2Gi"}}}}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "weights-loader", "namespace": NAMESPACE},
           "spec": {"restartPolicy": "Never",
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000,
                                        "fsGroup": 1000},
                    "containers": [{"name": "loader", "image": "image-similarity-predictor:kind",
                                    "imagePullPolicy": "Never",
                                    "command": ["sleep", "3600"],
                                    "volumeMounts": [{"name": "w", "mountPath": "/weights"}]}],
                    "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": CLAIM}}]}}
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                  "items": [pvc, pod]}))
    kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/weights-loader",
            "--timeout=300s")
    kubectl("-n", NAMESPACE, "exec", "weights-loader", "--", "mkdir", "-p", "/weights/dreamsim")
    kubectl("-n", NAMESPACE, "cp", f"{weights}/.", "weights-loader:/weights/dreamsim",
            timeout=600)
    kubectl("-n", NAMESPACE, "delete", "pod", "weights-loader", "--wait=true")


@pytest.fixture(scope="module")
def service(dino_weights_dir: Path) -> Iterator[str]:
    kubectl("create", "namespace", NAMESPACE)
    try:
        _copy_weights(dino_weights_dir)
        helm("install", RELEASE, str(CHART), "--kube-context", f"kind-{CLUSTER}",
             "--namespace", NAMESPACE, "-f", str(VALUES), "--timeout", "15m")
        kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready",
                f"inferenceservice/{RELEASE}-image-similarity-service", "--timeout=900s",
                timeout=960)
        deadline = time.monotonic() + 120  # the Ingress controller picks the route up
        while True:
            try:
                if httpx.get(ROUTE_URL + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{ROUTE_URL}/health never answered 200"
            time.sleep(2)
        yield ROUTE_URL
    finally:
        if os.environ.get("KIND_KEEP") != "1":
            subprocess.run(["kubectl", "--context", f"kind-{CLUSTER}", "delete", "namespace",
                            NAMESPACE, "--wait=false"], capture_output=True)


def _png(seed: int) -> str:
    arr = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_health_through_route(service: str) -> None:
    r = httpx.get(service + "/health", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["model_loaded"] is True
    assert r.json()["device"] == "cpu"


def test_similarity_through_route(service: str) -> None:
    a, b = _png(1), _png(2)
    r = httpx.post(service + "/similarity", timeout=120, json={"pairs": [
        {"reference_image": a, "generated_image": a, "pair_id": "same"},
        {"reference_image": a, "generated_image": b, "pair_id": "diff"}]})
    assert r.status_code == 200, r.text
    same, diff = r.json()["scores"]
    assert same["pair_id"] == "same" and same["distance"] == pytest.approx(0, abs=1e-4)
    assert math.isfinite(diff["distance"]) and diff["distance"] > 1e-4
    for s in (same, diff):
        assert s["similarity"] == pytest.approx(1 / (1 + s["distance"]), abs=1e-6)


def test_only_public_routes_exposed(service: str) -> None:
    """KServe's generic routes of the transformer stay inside the cluster (issue 9, 2)."""
    for method, path in [("GET", "/v2/models/dreamsim"), ("POST", "/v2/models/dreamsim/infer"),
                         ("POST", "/v1/models/dreamsim:predict"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), ("GET", "/metrics"), ("GET", "/")]:
        r = httpx.request(method, service + path, timeout=10, json={} if method == "POST" else None)
        assert r.status_code == 404, (method, path, r.status_code)


def test_kserve_made_no_route_of_its_own(service: str) -> None:
    """cluster-local label: the only Ingress is the chart's <name>-public (issue 9, 1)."""
    names = kubectl("-n", NAMESPACE, "get", "ingress", "-o", "name").split()
    assert names == [f"ingress.networking.k8s.io/{RELEASE}-image-similarity-service-public"]


def test_no_hpa_and_predictor_recreates(service: str) -> None:
    """min == max: autoscalerClass none, no HPA; predictor strategy Recreate (issue 9, 6, 8)."""
    assert kubectl("-n", NAMESPACE, "get", "hpa", "-o", "name").strip() == ""
    name = f"{RELEASE}-image-similarity-service-predictor"
    strategy = kubectl("-n", NAMESPACE, "get", "deployment", name, "-o",
                       "jsonpath={.spec.strategy.type}")
    assert strategy == "Recreate"
    logs = kubectl("-n", NAMESPACE, "logs", f"deployment/{name}", "-c", "fetch-weights")
    assert "already present" in logs, logs


def test_helm_test_pod(service: str) -> None:
    out = helm("test", RELEASE, "--kube-context", f"kind-{CLUSTER}", "--namespace", NAMESPACE,
               "--logs", "--timeout", "5m").stdout
    assert "ok" in out, out


_PROBE = """
import json, socket
def probe(host):
    try:
        socket.create_connection((host, 80), timeout=5).close()
        return "open"
    except OSError as e:
        return type(e).__name__
print(json.dumps({c: probe(f"{NAME}-{c}") for c in ("transformer", "predictor")}))
"""


def test_networkpolicy_only_transformer_reaches_predictor(service: str) -> None:
    """A pod that is not the transformer reaches the public API but not the predictor.

    kind (v0.24 and later) enforces NetworkPolicies with kindnet; the transformer's own path
    to the predictor is what test_similarity_through_route already goes through.
    """
    name = f"{RELEASE}-image-similarity-service"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "netpol-probe", "namespace": NAMESPACE},
           "spec": {"restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                    "containers": [{"name": "probe", "image": "image-similarity-transformer:kind",
                                    "imagePullPolicy": "Never",
                                    "env": [{"name": "NAME", "value": name}],
                                    "command": ["python3", "-c",
                                                "import os; NAME = os.environ['NAME']\n"
                                                + _PROBE]}]}}
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        kubectl("-n", NAMESPACE, "wait", "--for=jsonpath={.status.phase}=Succeeded",
                "pod/netpol-probe", "--timeout=180s", timeout=200)
        result = json.loads(kubectl("-n", NAMESPACE, "logs", "pod/netpol-probe").strip())
    finally:
        subprocess.run(["kubectl", "--context", f"kind-{CLUSTER}", "-n", NAMESPACE, "delete",
                        "pod", "netpol-probe", "--wait=false"], capture_output=True)
    assert result["transformer"] == "open", result
    assert result["predictor"] != "open", (
        f"{result}: the predictor is reachable from a pod that is not the transformer "
        "(is NetworkPolicy enforced? kind >= v0.24 with kindnet does)")


def test_upgrade_and_rollback(service: str) -> None:
    """`helm upgrade` rolls the predictor on one node without a hook, `helm rollback` back.

    Runs last: it restarts both components (issue 9, 5 and 6: the old pre-upgrade Job met a
    Multi-Attach error against the running predictor on every upgrade).
    """
    isvc = f"inferenceservice/{RELEASE}-image-similarity-service"
    context = ("--kube-context", f"kind-{CLUSTER}", "--namespace", NAMESPACE)
    helm("upgrade", RELEASE, str(CHART), *context, "-f", str(VALUES), "--set",
         "predictor.podAnnotations.revision=two", "--set",
         "transformer.podAnnotations.revision=two", "--timeout", "10m")
    time.sleep(5)  # let KServe see the new generation before waiting for Ready
    kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", isvc, "--timeout=900s",
            timeout=960)
    helm("rollback", RELEASE, "1", *context, "--timeout", "10m")
    time.sleep(5)
    kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", isvc, "--timeout=900s",
            timeout=960)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(service + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError("the service did not come back after the rollback")
