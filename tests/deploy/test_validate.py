"""Strict schema validation of every rendered object and every file in manifests/.

Kubernetes kinds go through kubernetes-validate (strict: unknown fields are errors). The
InferenceService goes through the KServe CRD's openAPIV3Schema with jsonschema, made strict
the way the API server prunes (every object schema without
x-kubernetes-preserve-unknown-fields rejects unknown fields). The CRD comes from
``$KSERVE_CRD_PATH`` (default ``../shared/kserve/serving.kserve.io_inferenceservices.yaml``
beside the checkout). HTTPRoute has no schema offline: its shape is checked by hand.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from testing.procs import REPO_ROOT
from tests.deploy.render import (
    MANIFESTS,
    VALUE_SETS,
    manifest_files,
    manifest_objects,
    render,
)

KUBERNETES_VERSION = os.environ.get("KUBERNETES_VERSION", "1.32.0")
CRD_PATH = Path(os.environ.get(
    "KSERVE_CRD_PATH", REPO_ROOT.parent / "shared" / "kserve" /
    "serving.kserve.io_inferenceservices.yaml"))
CRD_KINDS = {"InferenceService", "HTTPRoute", "ScaledObject", "PodMonitor", "ServiceMonitor"}


def _strict(schema: Any) -> Any:
    """Copy of an OpenAPI v3 schema in which object schemas reject unknown properties."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    return out


@pytest.fixture(scope="module")
def isvc_validator() -> jsonschema.Draft7Validator:
    if not CRD_PATH.is_file():
        pytest.skip(f"KServe CRD not found at {CRD_PATH} (set KSERVE_CRD_PATH to the "
                    "InferenceService CRD yaml to run this check)")
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def validate_isvc(obj: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                                 for e in errors)
    # metadata is free-form in the CRD: check it as Kubernetes would.
    meta = obj["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}, meta
    assert all(isinstance(v, str) for v in {**meta.get("labels", {}),
                                             **meta.get("annotations", {})}.values())


def check_httproute(obj: dict[str, Any]) -> None:
    """Gateway API v1 HTTPRoute shape (no schema offline): the fields this project uses."""
    assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    spec = obj["spec"]
    assert set(spec) <= {"parentRefs", "hostnames", "rules"}, spec
    assert spec["parentRefs"] and all(set(p) <= {"name", "namespace", "sectionName", "group",
                                                 "kind", "port"} for p in spec["parentRefs"])
    for rule in spec["rules"]:
        assert set(rule) <= {"matches", "filters", "backendRefs", "timeouts"}, rule
        for m in rule["matches"]:
            assert m["method"] in {"GET", "POST"}
            assert m["path"]["type"] in {"Exact", "PathPrefix"} and m["path"]["value"][0] == "/"
        for f in rule.get("filters", []):
            assert f["type"] == "URLRewrite" and f["urlRewrite"]["path"]["type"] in {
                "ReplaceFullPath", "ReplacePrefixMatch"}
        assert all(set(b) == {"name", "port"} for b in rule["backendRefs"])
        assert set(rule.get("timeouts", {})) <= {"request", "backendRequest"}


def _check_meta(obj: dict[str, Any], api_version: str) -> dict[str, Any]:
    assert obj["apiVersion"] == api_version, obj["apiVersion"]
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(obj["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    return obj["spec"]


def check_scaledobject(obj: dict[str, Any]) -> None:
    """KEDA v2 ScaledObject shape (no schema offline): the fields this chart uses."""
    spec = _check_meta(obj, "keda.sh/v1alpha1")
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount",
                         "pollingInterval", "cooldownPeriod", "triggers", "advanced"}, spec
    assert set(spec["scaleTargetRef"]) == {"apiVersion", "kind", "name"}
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for key in ("pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[key], int) and spec[key] >= 0, key
    for trig in spec["triggers"]:
        assert set(trig) <= {"type", "metricType", "metadata", "authenticationRef", "name"}
        assert trig["type"] == "prometheus" and trig["metricType"] == "AverageValue"
        # KEDA's trigger metadata is a map of strings.
        assert all(isinstance(v, str) for v in trig["metadata"].values()), trig["metadata"]
        assert {"serverAddress", "query", "threshold"} <= set(trig["metadata"])
        float(trig["metadata"]["threshold"])


def check_monitor(obj: dict[str, Any]) -> None:
    """Prometheus Operator PodMonitor / ServiceMonitor shape (no schema offline)."""
    spec = _check_meta(obj, "monitoring.coreos.com/v1")
    endpoints = "podMetricsEndpoints" if obj["kind"] == "PodMonitor" else "endpoints"
    assert set(spec) == {"selector", endpoints}, spec
    assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
    for e in spec[endpoints]:
        assert set(e) <= {"port", "path", "interval", "scheme"}
        assert e["path"].startswith("/") and isinstance(e["port"], str)


def validate(obj: dict[str, Any], validator_factory: Any) -> None:
    kind = obj["kind"]
    if kind == "InferenceService":
        validate_isvc(obj, validator_factory())
    elif kind == "HTTPRoute":
        check_httproute(obj)
    elif kind == "ScaledObject":
        check_scaledobject(obj)
    elif kind in {"PodMonitor", "ServiceMonitor"}:
        check_monitor(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_validate(name: str, request: pytest.FixtureRequest) -> None:
    objs = render(VALUE_SETS[name])
    for obj in objs:
        if obj["kind"] == "InferenceService":
            validate_isvc(obj, request.getfixturevalue("isvc_validator"))
        else:
            validate(obj, None)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_files_validate(path: Path, request: pytest.FixtureRequest) -> None:
    for file, obj in manifest_objects():
        if file != path:
            continue
        if obj["kind"] == "InferenceService":
            validate_isvc(obj, request.getfixturevalue("isvc_validator"))
        else:
            validate(obj, None)


def test_strict_validation_catches_unknown_fields(isvc_validator: jsonschema.Draft7Validator,
                                                  ) -> None:
    """The validators really are strict: a misplaced field is an error."""
    (isvc,) = [o for p, o in manifest_objects() if o["kind"] == "InferenceService"]
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["containers"][0]["gpu"] = 1
    with pytest.raises(AssertionError, match="gpu"):
        validate_isvc(bad, isvc_validator)
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["replicas"] = 2
    with pytest.raises(AssertionError, match="replicas"):
        validate_isvc(bad, isvc_validator)
    (ing,) = [o for p, o in manifest_objects() if o["kind"] == "Ingress"]
    bad = copy.deepcopy(ing)
    bad["spec"]["rules"][0]["http"]["paths"][0]["pathtype"] = "Exact"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_builds_everything() -> None:
    """`kubectl apply -k manifests/` would apply every object file, images rewritten."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in manifest_files()}
    # The two route files are alternatives: exactly one of them is listed; the headless
    # predictor Service is optional (gRPC round_robin, issue 18).
    assert files - listed == {"httproute.yaml", "predictor-headless.yaml"}, files - listed
    assert listed <= files
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize build not checked")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(o["kind"] for o in objs) == [
        "InferenceService", "Ingress", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim"]


def test_yamllint() -> None:
    files = [*MANIFESTS.parent.rglob("*.yaml"), REPO_ROOT / "docker-compose.yml",
             REPO_ROOT / "charts" / "image-similarity-service" / "values.yaml",
             REPO_ROOT / "charts" / "image-similarity-service" / "Chart.yaml"]
    config = Path(__file__).with_name("yamllint.yaml")
    proc = subprocess.run([str(Path(sys.executable).with_name("yamllint")), "--strict", "-c",
                           str(config), *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_parse() -> None:
    """The install and kind scripts are valid bash (the kind one cannot run here)."""
    for script in ("install_tools.sh", "kind_test.sh", "wait_ready.sh"):
        subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / script)], check=True)
