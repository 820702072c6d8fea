"""The Helm chart: lint, render with every value set, reject bad values, NOTES and helm test."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import pytest
import yaml
from PIL import Image

from tests.deploy.render import (
    CHART,
    VALUE_SETS,
    arg_value,
    container,
    env_of,
    helm,
    kinds,
    one,
    render,
)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(name: str) -> None:
    out = helm("lint", "--strict", str(CHART), values=VALUE_SETS[name]).stdout
    assert "0 chart(s) failed" in out, out


def test_default_render() -> None:
    objs = render()
    assert kinds(objs) == ["InferenceService", "Ingress", "NetworkPolicy", "NetworkPolicy",
                           "NetworkPolicy", "PersistentVolumeClaim", "Pod", "ServiceAccount"]
    isvc = one(objs, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    pred, tr = container(isvc, "predictor"), container(isvc, "transformer")
    assert pred["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(pred)["DEVICE"] == "cuda"
    assert "STORAGE_URI" not in env_of(pred), "the pod mounts the PVC itself"
    assert env_of(pred)["MODEL_CACHE_DIR"] == "/mnt/models"
    # KServe exposes the first port on 80 and the others as themselves: gRPC is the second,
    # reached as 8081 (issue 18), HTTP the first.
    assert pred["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                             {"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    assert arg_value(pred["args"], "--grpc_port") == "8081"
    assert int(arg_value(pred["args"], "--grpc_max_receive_message_length") or 0) >= 2 * 128 * (
        3 * 224 * 224)
    for probe in ("startupProbe", "readinessProbe"):
        assert pred[probe]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    startup = pred["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "too short to load"
    # Transformer: gRPC v2 to the predictor, model name dreamsim, exactly one worker.
    assert arg_value(tr["args"], "--predictor_protocol") == "grpc-v2"
    assert arg_value(tr["args"], "--model_name") == arg_value(pred["args"], "--model_name") == (
        "dreamsim")
    assert "--workers" not in tr["args"]
    assert "containerConcurrency" not in isvc["spec"]["transformer"]
    (fetch,) = isvc["spec"]["predictor"]["initContainers"]
    assert fetch["command"] == ["python", "-m", "predictor.weights"]
    pvc = one(objs, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["metadata"]["name"] == "image-similarity-weights"


def test_gpu_counts() -> None:
    cpu = container(one(render(VALUE_SETS["cpu"]), "InferenceService"), "predictor")
    assert env_of(cpu)["DEVICE"] == "cpu"
    assert not any("gpu" in k for k in cpu["resources"].get("limits", {}))
    cpu_isvc = one(render(VALUE_SETS["cpu"]), "InferenceService")
    assert "tolerations" not in cpu_isvc["spec"]["predictor"]

    isvc2 = one(render(VALUE_SETS["gpu2"]), "InferenceService")
    gpu2 = container(isvc2, "predictor")
    assert gpu2["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert gpu2["resources"]["limits"]["memory"] == "12Gi", "GPU limit must not drop the others"
    assert isvc2["spec"]["predictor"]["runtimeClassName"] == "nvidia"
    assert isvc2["spec"]["predictor"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nodeAffinity" in isvc2["spec"]["predictor"]["affinity"]

    amd = render({"predictor": {"gpu": {"count": 1, "resourceName": "amd.com/gpu"}}})
    pred = one(amd, "InferenceService")["spec"]["predictor"]
    assert pred["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"
    assert pred["tolerations"][0]["key"] == "amd.com/gpu"


def test_httproute() -> None:
    objs = render(VALUE_SETS["httproute"])
    assert "Ingress" not in kinds(objs)
    route = one(objs, "HTTPRoute")
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": "gateways", "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["similarity.example.com"]
    seen = set()
    for rule in route["spec"]["rules"]:
        (match,) = rule["matches"]
        seen.add((match["method"], match["path"]["value"]))
        (rewrite,) = rule["filters"]
        assert rewrite["urlRewrite"]["path"]["replaceFullPath"] == match["path"]["value"][
            len("/dreamsim"):]
        assert rule["backendRefs"] == [{"name": "image-similarity-transformer", "port": 80}]
    assert seen == {("POST", "/dreamsim/similarity"), ("POST", "/dreamsim/embed"),
                    ("GET", "/dreamsim/health"), ("POST", "/dreamsim/v1/embeddings"),
                    ("GET", "/dreamsim/v1/models")}


def test_ingress_tls() -> None:
    ing = one(render(VALUE_SETS["ingress-tls"]), "Ingress")
    assert ing["spec"]["tls"] == [{"secretName": "similarity-tls",
                                   "hosts": ["similarity.example.com"]}]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "similarity.example.com"
    assert {p["path"] for p in rule["http"]["paths"]} == {"/similarity", "/embed", "/health",
                                                          "/v1/embeddings", "/v1/models"}
    assert all(p["backend"]["service"] == {"name": "image-similarity-transformer",
                                           "port": {"number": 80}}
               for p in rule["http"]["paths"])


def test_weights_existing_claim() -> None:
    objs = render(VALUE_SETS["existing-claim"])
    assert "PersistentVolumeClaim" not in kinds(objs), "the user's claim, not a new one"
    isvc = one(objs, "InferenceService")
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "dreamsim-weights"}} in (
        isvc["spec"]["predictor"]["volumes"])
    assert "STORAGE_URI" not in env_of(container(isvc, "predictor"))
    (fetch,) = isvc["spec"]["predictor"]["initContainers"]
    assert env_of(fetch)["WEIGHTS_BASE_URL"] == "http://weights.ml-infra.svc/dreamsim"


def test_weights_storage_uri() -> None:
    objs = render(VALUE_SETS["storage-uri"])
    assert "PersistentVolumeClaim" not in kinds(objs)
    isvc = one(objs, "InferenceService")
    pred = container(isvc, "predictor")
    # KServe's storage initializer downloads it to /mnt/models: no volume, no init container.
    assert env_of(pred)["STORAGE_URI"] == "gs://models/dreamsim"
    assert "initContainers" not in isvc["spec"]["predictor"]
    assert [v["name"] for v in isvc["spec"]["predictor"]["volumes"]] == ["tmp"]


def test_settings_and_extras() -> None:
    objs = render(VALUE_SETS["ensemble-no-route"])
    assert "Ingress" not in kinds(objs) and "HTTPRoute" not in kinds(objs)
    assert "ServiceAccount" not in kinds(objs)
    isvc = one(objs, "InferenceService")
    pred, tr = container(isvc, "predictor"), container(isvc, "transformer")
    assert env_of(pred)["MODEL_TYPE"] == "ensemble" and env_of(pred)["PRECISION"] == "fp16"
    assert env_of(pred)["MAX_PAIRS_PER_REQUEST"] == env_of(tr)["MAX_PAIRS_PER_REQUEST"] == "64"
    # The predictor's batch size; the transformer has no such setting (it was deployed dead).
    assert env_of(pred)["BATCH_SIZE_LIMIT"] == "32" and "BATCH_SIZE_LIMIT" not in env_of(tr)
    assert env_of(pred)["MAX_IMAGES_PER_REQUEST"] == env_of(tr)["MAX_IMAGES_PER_REQUEST"] == "100"
    assert env_of(pred)["LOG_LEVEL"] == env_of(tr)["LOG_LEVEL"] == "DEBUG"
    assert env_of(pred)["LOG_FORMAT"] == env_of(tr)["LOG_FORMAT"] == "json"
    assert env_of(pred)["TORCH_THREADS"] == "4"
    assert env_of(tr)["URL_FETCH_ENABLED"] == "false"
    assert env_of(tr)["PREDICTOR_CONNECTIONS"] == "16"
    assert env_of(pred)["GRPC_MAX_CONNECTION_AGE"] == "60"
    assert isvc["spec"]["predictor"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "default"
    assert {"key": "dedicated", "operator": "Equal", "value": "ml",
            "effect": "NoSchedule"} in isvc["spec"]["predictor"]["tolerations"]
    (fetch,) = one(render({"predictor": {"modelType": "ensemble"}}), "InferenceService")[
        "spec"]["predictor"]["initContainers"]
    assert fetch["args"][:2] == ["--model-type", "ensemble"]


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "negative-gpus": ({"predictor": {"gpu": {"count": -1}}}, "minimum"),
    "unknown-model": ({"predictor": {"modelType": "vit_huge"}}, "modelType"),
    "bad-precision": ({"predictor": {"precision": "fp8"}}, "precision"),
    "unknown-key": ({"predictor": {"replicas": 3}}, "replicas"),
    "typo-top-level": ({"predicter": {}}, "predicter"),
    "route-kind": ({"route": {"kind": "nginx"}}, "kind"),
    "storage-uri-missing": ({"weights": {"source": "storageUri"}}, "storageUri"),
    "existing-claim-missing": ({"weights": {"source": "existingClaim"}}, "existingClaim"),
    "bad-storage-uri": ({"weights": {"source": "storageUri", "storageUri": "ftp://x"}},
                        "storageUri"),
    "bad-mirror": ({"weights": {"fetch": {"baseUrl": "weights.internal"}}}, "baseUrl"),
    # Issue 9 defect 8: Knative's metrics do nothing in Standard mode; the old keys are gone.
    "scale-metric-gpu": ({"predictor": {"autoscaling": {"class": "hpa", "metric": "gpu"}}},
                         "metric"),
    "scale-metric-concurrency": (
        {"transformer": {"autoscaling": {"class": "hpa", "metric": "concurrency"}}}, "metric"),
    "scale-metric-rps": ({"predictor": {"autoscaling": {"metric": "rps"}}}, "metric"),
    "old-scale-metric-key": ({"predictor": {"scaleMetric": "cpu"}}, "scaleMetric"),
    "autoscaler-class": ({"predictor": {"autoscaling": {"class": "kpa"}}}, "class"),
    "none-with-range": ({"transformer": {"maxReplicas": 3, "autoscaling": {"class": "none"}}},
                        "autoscaling.class none"),
    "keda-bad-threshold": ({"predictor": {"autoscaling": {"keda": {"threshold": "lots"}}}},
                           "threshold"),
    # Defect 5: the hook Job is gone, and its value with it.
    "old-pvc-job-source": ({"weights": {"source": "pvcJob"}}, "source"),
    "old-job-key": ({"weights": {"job": {"backoffLimit": 1}}}, "job"),
    # Defect 6: only the two Kubernetes strategies, no rollingUpdate with Recreate.
    "bad-strategy": ({"predictor": {"deploymentStrategy": {"type": "BlueGreen"}}}, "type"),
    "recreate-with-rolling": ({"predictor": {"deploymentStrategy": {
        "type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}, "deploymentStrategy"),
    "pdb-blocks-drains": ({"podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}},
                          "maxUnavailable"),
    "monitoring-kind": ({"monitoring": {"kind": "prometheus"}}, "kind"),
    "long-fullname": ({"fullnameOverride": "a" * 47}, "fullnameOverride"),
    "pairs-as-string": ({"settings": {"maxPairsPerRequest": "many"}}, "maxPairsPerRequest"),
    "tls-without-secret": ({"route": {"tls": {"enabled": True}}}, "secretName"),
    "zero-replicas": ({"transformer": {"minReplicas": 0}}, "minReplicas"),
    "max-below-min": ({"predictor": {"minReplicas": 3, "maxReplicas": 2}}, "maxReplicas"),
    "tiny-grpc-limit": ({"predictor": {"grpcMaxMessageBytes": 1024}}, "grpcMaxMessageBytes"),
    # The explicit --grpc_max_* flags replace the limit the predictor would compute itself.
    "grpc-limit-below-pairs": ({"settings": {"maxPairsPerRequest": 256}},
                               "raise it to at least 81264640"),
    "grpc-limit-below-embed": ({"settings": {"maxImagesPerRequest": 1000}},
                               "predictor.grpcMaxMessageBytes"),
    "log-format": ({"logging": {"format": "logfmt"}}, "format"),
    "log-level": ({"logging": {"level": "TRACE"}}, "level"),
    "connections-zero": ({"transformer": {"predictorConnections": 0}}, "predictorConnections"),
    "bad-host": ({"route": {"host": "https://x.example.com"}}, "host"),
    "netpol-bad-cidr": ({"networkPolicy": {"transformer": {"allowedImageCIDRs": ["10.0.0.1"]}}},
                        "allowedImageCIDRs"),
    "netpol-bad-port": ({"networkPolicy": {"transformer": {"imagePorts": [0]}}}, "imagePorts"),
    "netpol-unknown-key": ({"networkPolicy": {"transformer": {"egress": []}}}, "egress"),
    "netpol-enabled-string": ({"networkPolicy": {"enabled": "yes"}}, "enabled"),
    "netpol-bad-peer": ({"networkPolicy": {"metricsFrom": [{"namespace": "monitoring"}]}},
                        "metricsFrom"),
}


# JSON schema cannot compare two values: the template checks these with `fail`.
CHECKED_BY_TEMPLATE = {"max-below-min", "none-with-range", "grpc-limit-below-pairs",
                       "grpc-limit-below-embed"}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_values_rejected(name: str) -> None:
    values, needle = BAD_VALUES[name]
    proc = helm("template", "x", str(CHART), values=values, check=False)
    assert proc.returncode != 0, f"{name} was accepted:\n{proc.stdout[:2000]}"
    assert needle in proc.stderr, proc.stderr
    if name not in CHECKED_BY_TEMPLATE:  # helm lint reports a template `fail` as INFO only
        assert helm("lint", str(CHART), values=values, check=False).returncode != 0


def _decoded_png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def test_notes_print_a_working_curl() -> None:
    out = helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "ml").stdout
    notes = out[out.index("NOTES:"):]
    assert "curl -sS -X POST \"$URL/similarity\" -H 'Content-Type: application/json'" in notes
    assert "kubectl -n ml wait --for=condition=Ready inferenceservice/demo-image-similarity" in (
        notes)
    body = re.search(r"-d '(\{.*\})'", notes)
    assert body, notes
    pairs = yaml.safe_load(body.group(1))["pairs"]  # JSON is YAML
    assert _decoded_png(pairs[0]["reference_image"]).size == (8, 8)
    # Without a route the NOTES fall back to port-forward.
    none = helm("install", "demo", str(CHART), "--dry-run=client",
                values={"route": {"kind": "none"}}).stdout
    assert "port-forward service/demo-image-similarity-service-transformer 8080:80" in none


def test_helm_test_pod() -> None:
    pod = one(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    script = c["command"][-1]
    assert '"/health"' in script and '"/similarity"' in script
    env = env_of(c)
    assert env["BASE_URL"] == "http://image-similarity-transformer.image-similarity.svc"
    assert _decoded_png(env["PNG_B64"]).mode == "RGB"
    compile(script, "helm-test", "exec")  # the embedded script is valid Python


def _value_keys(text: str) -> list[tuple[int, str, bool]]:
    """(indent, key, documented) for each mapping key line of values.yaml."""
    out: list[tuple[int, str, bool]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        j = i - 1
        documented = False
        while j >= 0 and lines[j].strip().startswith("#"):
            documented |= lines[j].strip().startswith("# --")
            j -= 1
        out.append((len(m.group(1)), m.group(2), documented))
    return out


def test_every_value_documented() -> None:
    """Each leaf key is documented (`# --`) itself or through a documented parent map."""
    keys = _value_keys((CHART / "values.yaml").read_text())
    stack: list[tuple[int, bool]] = []
    missing = []
    for n, (indent, key, documented) in enumerate(keys):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        covered = documented or any(d for _, d in stack)
        stack.append((indent, covered))
        is_leaf = n + 1 == len(keys) or keys[n + 1][0] <= indent
        if is_leaf and not covered:
            missing.append(key)
    assert not missing, f"values without a `# --` comment: {missing}"


def test_grpc_limit_holds_the_largest_request() -> None:
    """The rendered limit fits what the predictor itself computes for these settings."""
    from predictor.settings import PredictorSettings

    for settings in ({}, {"maxPairsPerRequest": 200, "maxImagesPerRequest": 50}):
        values = {"settings": settings}
        if settings:
            values["predictor"] = {"grpcMaxMessageBytes": 128 << 20}
        pred = container(one(render(values), "InferenceService"), "predictor")
        env = env_of(pred)
        needed = PredictorSettings(
            max_pairs_per_request=int(env["MAX_PAIRS_PER_REQUEST"]),
            max_images_per_request=int(env["MAX_IMAGES_PER_REQUEST"])).grpc_message_limit()
        for flag in ("--grpc_max_receive_message_length", "--grpc_max_send_message_length"):
            assert int(arg_value(pred["args"], flag) or 0) >= needed, (settings, flag)


def test_notes_warn_about_too_few_predictor_connections() -> None:
    def notes(values: dict[str, Any]) -> str:
        out = helm("install", "demo", str(CHART), "--dry-run=client", values=values).stdout
        return out[out.index("NOTES:"):]

    assert "predictorConnections" not in notes({})
    many = {"predictor": {"maxReplicas": 6, "autoscaling": {"class": "hpa"}}}
    assert "transformer.predictorConnections (8) is below twice" in notes(many)
    assert "predictorConnections" not in notes({**many, "transformer": {
        "predictorConnections": 18}})
