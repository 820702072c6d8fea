"""What a real KServe 0.21 cluster would break (issue 9, section 2), checked on rendered objects.

Each test names the defect it guards against and the KServe controller behaviour behind it
(``kserve/kserve`` sources, ``pkg/controller/v1beta1/inferenceservice/``):

1. ``reconcilers/ingress/kube_ingress_reconciler.go`` / ``httproute_reconciler.go`` own the
   Ingress / HTTPRoutes named ``<isvc>`` (and ``<isvc>-predictor|transformer|explainer``)
   unless the InferenceService is labelled ``networking.kserve.io/visibility: cluster-local``.
2. Only the public API leaves the cluster.
3. The KServe Helm charts are ``kserve-crd`` and ``kserve-resources``.
4. ``reconcilers/raw/raw_kube_reconciler.go`` ``createRawURL`` validates the host
   ``<isvc>-<component>-<namespace>.<domain>`` (every label 63 characters at most).
5. Weights: no hook Job; the predictor pod fills its own volume.
6. ``reconcilers/deployment/deployment_reconciler.go``: RollingUpdate 25%/25% unless the
   component's ``deploymentStrategy`` says otherwise.
7. kustomize image bumps: nothing immutable holds an image.
8. ``reconcilers/hpa/hpa_reconciler.go``: an HPA for class ``hpa`` (the default) whatever
   min/max; only cpu and memory metrics; none for classes ``none``/``external``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from predictor.layout import VARIANTS as LAYOUT_VARIANTS
from testing.procs import REPO_ROOT
from tests.deploy.render import (
    CHART,
    MANIFESTS,
    VALUE_SETS,
    container,
    env_of,
    helm,
    manifest_objects,
    one,
    render,
)

VARIANTS = sorted(LAYOUT_VARIANTS)  # the one table of the eight names (predictor/layout.py)
PUBLIC = {("POST", "/similarity"), ("POST", "/embed"), ("GET", "/health"),
          ("POST", "/v1/embeddings"), ("GET", "/v1/models")}
ROUTE_KINDS = {"Ingress", "HTTPRoute"}
ROUTE_SETS = ["default", "httproute", "ingress-tls"]
VISIBILITY = "networking.kserve.io/visibility"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"


def kserve_owned_names(isvc: str) -> set[str]:
    """Names of the Ingress/HTTPRoutes KServe's ingress reconcilers create and overwrite."""
    return {isvc, f"{isvc}-predictor", f"{isvc}-transformer", f"{isvc}-explainer"}


def routes(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ROUTE_KINDS]


def exposed(route: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) pairs a route sends to the transformer; method ANY for an Ingress."""
    if route["kind"] == "Ingress":
        out = set()
        for rule in route["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["pathType"] == "Exact", p  # a Prefix would publish /v2/... too
                out.add(("ANY", p["path"]))
        return out
    out = set()
    for rule in route["spec"]["rules"]:
        for m in rule["matches"]:
            assert m["path"]["type"] == "Exact", m
            path = m["path"]["value"]
            for f in rule.get("filters", []):  # what the transformer sees after a prefix
                path = f["urlRewrite"]["path"]["replaceFullPath"]
            out.add((m["method"], path))
    return out


# ---------------------------------------------------------------- 1. KServe's own route


@pytest.mark.parametrize("name", ROUTE_SETS)
def test_route_not_named_like_kserve_objects(name: str) -> None:
    objs = render(VALUE_SETS[name])
    isvc = one(objs, "InferenceService")
    (route,) = routes(objs)
    assert route["metadata"]["name"] not in kserve_owned_names(isvc["metadata"]["name"])
    assert route["metadata"]["name"] == "image-similarity-public"


def test_isvc_is_cluster_local() -> None:
    """Without the label KServe publishes / of the transformer (every built-in route)."""
    for values in (VALUE_SETS["default"], VALUE_SETS["httproute"],
                   {"route": {"kind": "none"}}):
        isvc = one(render(values), "InferenceService")
        assert isvc["metadata"]["labels"][VISIBILITY] == "cluster-local"
    (plain,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    assert plain["metadata"]["labels"][VISIBILITY] == "cluster-local"
    owned = kserve_owned_names(plain["metadata"]["name"])
    for _, obj in manifest_objects():
        if obj["kind"] in ROUTE_KINDS:
            assert obj["metadata"]["name"] not in owned, obj["metadata"]["name"]


# ---------------------------------------------------------------- 2. public routes only


@pytest.mark.parametrize("name", ROUTE_SETS)
def test_only_public_routes_exposed(name: str) -> None:
    (route,) = routes(render(VALUE_SETS[name]))
    got = exposed(route)
    if route["kind"] == "Ingress":
        assert got == {("ANY", p) for _, p in PUBLIC}
    else:
        assert got == PUBLIC
    for rule in route["spec"].get("rules", []):
        backends = [b["backend"]["service"]["name"] for b in rule.get("http", {}).get(
            "paths", [])] or [b["name"] for b in rule.get("backendRefs", [])]
        assert backends and all(b == "image-similarity-transformer" for b in backends)


def test_manifest_routes_expose_only_public_api() -> None:
    found = {obj["kind"]: exposed(obj) for _, obj in manifest_objects()
             if obj["kind"] in ROUTE_KINDS}
    assert found == {"Ingress": {("ANY", p) for _, p in PUBLIC}, "HTTPRoute": PUBLIC}


# ---------------------------------------------------------------- 3. chart names


def _helm_installs(text: str) -> list[str]:
    """`helm install|upgrade` command lines of a script or markdown (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines()
            if re.search(r"(\bhelm\b|\$HELM\b).*\b(install|upgrade)\b", line) and "oci://" in line]


@pytest.mark.parametrize("path", ["docs/deploy.md", "scripts/kind_test.sh"])
def test_kserve_charts_have_their_real_names(path: str) -> None:
    """KServe publishes kserve-crd and kserve-resources (0.17+); `kserve` does not exist."""
    lines = _helm_installs((REPO_ROOT / path).read_text())
    charts = {m.group(1) for line in lines
              for m in re.finditer(r"oci://ghcr\.io/kserve/charts/([\w-]+)", line)}
    assert charts == {"kserve-crd", "kserve-resources"}, lines
    kserve_lines = [line for line in lines if "ghcr.io/kserve" in line]
    crd = next(i for i, line in enumerate(kserve_lines) if "kserve-crd" in line)
    res = next(i for i, line in enumerate(kserve_lines) if "kserve-resources" in line)
    assert crd < res, "the CRDs go first"
    res_line = kserve_lines[res]
    assert "kserve.controller.deploymentMode=Standard" in res_line, res_line


def test_docs_and_kind_script_install_the_same_kserve() -> None:
    """The documented sequence is the one scripts/kind_test.sh runs (same versions, flags)."""
    script = (REPO_ROOT / "scripts" / "kind_test.sh").read_text()
    docs = (REPO_ROOT / "docs" / "deploy.md").read_text()
    version = re.search(r'KSERVE_VERSION="\$\{KSERVE_VERSION:-(v[\d.]+)\}"', script)
    assert version, "kind_test.sh pins KSERVE_VERSION"
    for chart in ("kserve-crd", "kserve-resources"):
        (doc_line,) = [line for line in _helm_installs(docs) if f"charts/{chart} " in line]
        assert f"--version {version.group(1)}" in doc_line, doc_line
    cert = re.search(r'CERT_MANAGER_VERSION="\$\{CERT_MANAGER_VERSION:-(v[\d.]+)\}"', script)
    assert cert and cert.group(1) in docs


# ---------------------------------------------------------------- 4. host name length


def _template(release: str, namespace: str, values: dict[str, Any] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    return helm("template", release, str(CHART), "--namespace", namespace, values=values,
                check=False)


def test_host_name_too_long_fails_at_render_time() -> None:
    """`helm install image-similarity -n image-similarity`: KServe would refuse the host."""
    proc = _template("image-similarity", "image-similarity")
    assert proc.returncode != 0
    host = "image-similarity-image-similarity-service-transformer-image-similarity"
    assert f'"{host}" is {len(host)} characters' in proc.stderr, proc.stderr
    assert "fullnameOverride" in proc.stderr and "63" in proc.stderr
    # The message says how long the name may be in this namespace: that length works.
    allowed = int(re.search(r"at most (\d+) characters", proc.stderr).group(1))  # type: ignore[union-attr]
    assert allowed == 63 - len("-transformer-image-similarity")
    ok = _template("image-similarity", "image-similarity", {"fullnameOverride": "s" * allowed})
    assert ok.returncode == 0, ok.stderr
    too_long = _template("x", "image-similarity", {"fullnameOverride": "s" * (allowed + 1)})
    assert too_long.returncode != 0 and "63" in too_long.stderr


def test_host_name_check_can_be_switched_off() -> None:
    """For a domainTemplate without the namespace (then the label limit still applies)."""
    values = {"kserve": {"checkHostNames": False}}
    assert _template("image-similarity", "image-similarity", values).returncode == 0


def test_pod_label_limit() -> None:
    """KServe labels pods app: isvc.<name>-transformer (63 characters at most)."""
    long_release = "r" * 53  # helm's longest release name
    objs = [d for d in yaml.safe_load_all(_template(long_release, "n").stdout) if d]
    name = one(objs, "InferenceService")["metadata"]["name"]
    assert len(f"isvc.{name}-transformer") <= 63
    proc = _template("x", "n", {"fullnameOverride": "a" * 47})
    assert proc.returncode != 0 and "fullnameOverride" in proc.stderr


# ---------------------------------------------------------------- 5. weights


def _init(isvc: dict[str, Any]) -> dict[str, Any]:
    (c,) = isvc["spec"]["predictor"]["initContainers"]
    return c


def _mount(c: dict[str, Any], volume: str) -> dict[str, Any]:
    (m,) = [m for m in c["volumeMounts"] if m["name"] == volume]
    return m


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_no_job_and_no_upgrade_hook(name: str) -> None:
    """A pre-upgrade Job met Multi-Attach against the running predictor on every upgrade."""
    objs = render(VALUE_SETS[name])
    assert not [o for o in objs if o["kind"] in {"Job", "CronJob"}]
    for o in objs:
        hook = o["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        assert "upgrade" not in hook, (o["kind"], hook)


def test_predictor_pod_fills_its_own_volume() -> None:
    objs = render()
    isvc = one(objs, "InferenceService")
    pred_spec = isvc["spec"]["predictor"]
    init, pred = _init(isvc), container(isvc, "predictor")
    # Same pod: the init container runs where the predictor is scheduled, with its
    # tolerations, nodeSelector and affinity (pod-level fields), and needs no GPU.
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pred_spec["tolerations"])
    assert not any("gpu" in k for k in init["resources"].get("limits", {}))
    assert init["image"] == pred["image"]
    # uid 1000 writes the volume through fsGroup; no recursive chown at every start.
    assert pred_spec["securityContext"]["fsGroup"] == init["securityContext"].get(
        "runAsGroup", pred_spec["securityContext"]["runAsGroup"])
    assert pred_spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert "WEIGHTS_BASE_URL" not in env_of(init), "upstream's URLs unless a mirror is set"
    assert init["securityContext"] == pred["securityContext"]
    # It writes the claim the predictor reads, at the folder the predictor reads.
    pvc = one(objs, "PersistentVolumeClaim")
    (vol,) = [v for v in pred_spec["volumes"] if v["name"] == "weights"]
    assert vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    w_init, w_pred = _mount(init, "weights"), _mount(pred, "weights")
    assert not w_init.get("readOnly") and w_pred["readOnly"] is True
    cache = init["args"][init["args"].index("--cache-dir") + 1]
    assert cache == f"{w_init['mountPath']}/{w_pred['subPath']}"
    assert w_pred["mountPath"] == env_of(pred)["MODEL_CACHE_DIR"]
    # A plain release object (issue 18: a hook is never created on upgrade) that survives
    # uninstall.
    assert "helm.sh/hook" not in pvc["metadata"]["annotations"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_change_fetches_the_new_variant(variant: str) -> None:
    """The init container fetches what MODEL_TYPE needs, for each of the eight variants."""
    isvc = one(render({"predictor": {"modelType": variant}}), "InferenceService")
    args = _init(isvc)["args"]
    assert args[args.index("--model-type") + 1] == variant
    assert env_of(container(isvc, "predictor"))["MODEL_TYPE"] == variant


def test_fetch_disabled() -> None:
    isvc = one(render({"weights": {"fetch": {"enabled": False}}}), "InferenceService")
    assert "initContainers" not in isvc["spec"]["predictor"]
    assert _mount(container(isvc, "predictor"), "weights")["readOnly"] is True


def test_manifests_fill_the_volume_in_the_pod() -> None:
    (isvc,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    args = _init(isvc)["args"]
    assert args[args.index("--model-type") + 1] == env_of(container(isvc, "predictor"))[
        "MODEL_TYPE"]
    assert not [o for _, o in manifest_objects() if o["kind"] == "Job"]


@pytest.mark.slow
def test_init_container_command_skips_present_weights(dino_weights_dir: Path,
                                                      tmp_path: Path) -> None:
    """The rendered init container, run for real: no download when the files are there,
    and after a variant change it goes for the new variant's files (and says so)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp_path),
           # Any download attempt fails at once instead of hanging on a closed network.
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    volume = tmp_path / "volume"
    volume.mkdir()

    def run(variant: str) -> subprocess.CompletedProcess[str]:
        init = _init(one(render({"predictor": {"modelType": variant}}), "InferenceService"))
        assert init["command"][0] == "python"
        args = [a.replace("/weights", str(volume)) for a in init["args"]]
        return subprocess.run([sys.executable, *init["command"][1:], *args], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    shutil.copytree(dino_weights_dir, volume / "dreamsim")
    ok = run("dino_vitb16")
    assert ok.returncode == 0, ok.stderr
    assert "already present" in ok.stdout
    changed = run("ensemble")
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "dreamsim_ensemble_checkpoint.zip" in changed.stderr, changed.stderr


# ---------------------------------------------------------------- 6. rollout strategy


def test_predictor_recreates_by_default() -> None:
    """RollingUpdate with maxSurge 25% of one replica wants a second GPU for every rollout."""
    isvc = one(render(), "InferenceService")
    assert isvc["spec"]["predictor"]["deploymentStrategy"] == {"type": "Recreate"}
    assert "deploymentStrategy" not in isvc["spec"]["transformer"], "KServe's default: rolling"
    (plain,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    assert plain["spec"]["predictor"]["deploymentStrategy"] == {"type": "Recreate"}


def test_strategy_configurable() -> None:
    isvc = one(render(VALUE_SETS["rolling-rwx"]), "InferenceService")
    assert isvc["spec"]["predictor"]["deploymentStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"} in _init(isvc)["env"]
    # null (helm's way to delete a default) leaves KServe's own default.
    kserve_default = one(render({"predictor": {"deploymentStrategy": None}}), "InferenceService")
    assert "deploymentStrategy" not in kserve_default["spec"]["predictor"]


def test_notes_warn_about_rwo_with_rolling_updates() -> None:
    def notes(values: dict[str, Any]) -> str:
        out = helm("install", "demo", str(CHART), "--dry-run=client", "-n", "ml",
                   values=values).stdout
        return out[out.index("NOTES:"):]

    assert "ReadWriteOnce" not in notes({})
    warned = notes({"predictor": {"deploymentStrategy": {"type": "RollingUpdate"}}})
    assert "WARNING: the weights PVC is ReadWriteOnce" in warned
    assert "WARNING" not in notes(VALUE_SETS["rolling-rwx"])


# ---------------------------------------------------------------- 7. kustomize image bumps


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_image_bump_reaches_every_image(tmp_path: Path) -> None:
    """`kustomize edit set image` output: every image rewritten, nothing immutable left."""
    work = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, work)
    kz = yaml.safe_load((work / "kustomization.yaml").read_text())
    kz["images"] = [
        {"name": "image-similarity-predictor",
         "newName": "registry.example.com/ml/image-similarity-predictor", "newTag": "2.0.0"},
        {"name": "image-similarity-transformer",
         "newName": "registry.example.com/ml/image-similarity-transformer", "newTag": "2.0.0"}]
    (work / "kustomization.yaml").write_text(yaml.safe_dump(kz))
    out = subprocess.run(["kubectl", "kustomize", str(work)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    assert not [o for o in objs if o["kind"] in {"Job", "CronJob"}]
    images = re.findall(r"image: (\S+)", out)
    assert len(images) == 3, images  # predictor, its init container, transformer
    assert all(i.startswith("registry.example.com/ml/") and i.endswith(":2.0.0")
               for i in images), images


# ---------------------------------------------------------------- 8. autoscaling


def _component(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "InferenceService")["spec"][component]
    return spec


def test_no_hpa_when_min_equals_max() -> None:
    """KServe 0.21 creates an HPA for class hpa even when min == max: ask for none."""
    objs = render()
    for component in ("predictor", "transformer"):
        spec = _component(objs, component)
        assert spec["minReplicas"] == spec["maxReplicas"]
        assert spec["annotations"][AUTOSCALER_CLASS] == "none"
        assert "scaleMetric" not in spec and "scaleTarget" not in spec
    (plain,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    for component in ("predictor", "transformer"):
        assert plain["spec"][component]["annotations"][AUTOSCALER_CLASS] == "none"


def test_hpa_on_cpu_and_memory() -> None:
    objs = render(VALUE_SETS["autoscaling"])
    pred, tr = _component(objs, "predictor"), _component(objs, "transformer")
    assert pred["annotations"][AUTOSCALER_CLASS] == "hpa"
    assert (pred["scaleMetric"], pred["scaleTarget"]) == ("cpu", 70)
    # class auto with min < max is an HPA too.
    assert tr["annotations"][AUTOSCALER_CLASS] == "hpa"
    assert (tr["scaleMetric"], tr["scaleTarget"]) == ("memory", 60)
    assert "ScaledObject" not in {o["kind"] for o in objs}


def test_keda_scaled_objects() -> None:
    objs = render(VALUE_SETS["keda"], namespace="ml")
    scaled = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ScaledObject"}
    assert sorted(scaled) == ["image-similarity-predictor", "image-similarity-transformer"]
    for component, (lo, hi) in {"predictor": (1, 4), "transformer": (2, 6)}.items():
        spec = _component(objs, component)
        # KServe must not run an HPA beside KEDA's: class external, no scaleMetric.
        assert spec["annotations"][AUTOSCALER_CLASS] == "external"
        assert "scaleMetric" not in spec
        so = scaled[f"image-similarity-{component}"]["spec"]
        assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": f"image-similarity-{component}"}
        assert (so["minReplicaCount"], so["maxReplicaCount"]) == (lo, hi)
        (trigger,) = so["triggers"]
        query = trigger["metadata"]["query"]
        assert "{{" not in query, "the query went through tpl"
        assert 'namespace="ml"' in query
        assert f'pod=~"image-similarity-{component}-.*"' in query
    pred_q = scaled["image-similarity-predictor"]["spec"]["triggers"][0]["metadata"]["query"]
    tr_trigger = scaled["image-similarity-transformer"]["spec"]["triggers"][0]
    assert "dreamsim_queue_wait_seconds_sum" in pred_q
    assert "similarity_request_seconds_sum" in tr_trigger["metadata"]["query"]
    assert tr_trigger["metadata"]["threshold"] == "2.5"
    assert tr_trigger["authenticationRef"] == {"name": "prometheus-auth"}


def test_keda_queries_name_metrics_the_services_export() -> None:
    """The default PromQL reads series the predictor and transformer really register."""
    from prometheus_client.metrics import MetricWrapperBase

    from predictor import metrics as pm
    from transformer import metrics as tm

    exported = set()
    for module in (pm, tm):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                for metric in obj.collect():
                    exported |= {s.name for s in metric.samples}
    objs = render(VALUE_SETS["keda"])
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        query = so["spec"]["triggers"][0]["metadata"]["query"]
        used = set(re.findall(r"\b([a-z_]+_(?:sum|count|total|bucket))\{", query))
        assert used and used <= exported, (used, sorted(exported))


# ---------------------------------------------------------------- section 3: monitors, budgets


def test_pod_monitor_scrapes_both_components() -> None:
    objs = render(VALUE_SETS["keda"])
    mon = one(objs, "PodMonitor")
    assert mon["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    sel = mon["spec"]["selector"]
    assert sel["matchLabels"] == {"serving.kserve.io/inferenceservice": "image-similarity"}
    assert sel["matchExpressions"] == [{"key": "component", "operator": "In",
                                        "values": ["predictor", "transformer"]}]
    (ep,) = mon["spec"]["podMetricsEndpoints"]
    isvc = one(objs, "InferenceService")
    for component in ("predictor", "transformer"):
        ports = {p["name"]: p["containerPort"] for p in container(isvc, component)["ports"]}
        assert ports[ep["port"]] == 8080, component  # where KServe serves /metrics
    assert ep["path"] == "/metrics"


def test_service_monitor_and_none() -> None:
    mon = one(render(VALUE_SETS["servicemonitor"]), "ServiceMonitor")
    (ep,) = mon["spec"]["endpoints"]
    assert ep["port"] == "http"  # the Service port KServe names after the container port
    kinds = {o["kind"] for o in render()}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PodDisruptionBudget", "ScaledObject"}


def test_pod_disruption_budgets() -> None:
    objs = render(VALUE_SETS["servicemonitor"])
    pdbs = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "PodDisruptionBudget"}
    assert pdbs == {f"image-similarity-{c}": {
        "maxUnavailable": "50%",
        "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "image-similarity",
                                     "component": c}}} for c in ("predictor", "transformer")}


def _nginx_size_bytes(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def test_ingress_limits_let_the_service_answer_first() -> None:
    """The Ingress admits every body the service accepts and waits longer than the
    service's request deadline, so clients get the service's own 413/504 with their JSON
    reasons; and it does not admit far more than that (a 256 MB default would let proxies
    buffer bodies the service refuses anyway)."""
    from transformer.settings import TransformerSettings

    s = TransformerSettings()
    for notes in (one(render(), "Ingress")["metadata"]["annotations"],
                        {o["kind"]: o for _, o in manifest_objects()}["Ingress"]["metadata"][
                            "annotations"]):
        body = _nginx_size_bytes(notes["nginx.ingress.kubernetes.io/proxy-body-size"])
        assert s.max_request_body_mb * 1e6 <= body <= 1.1 * s.max_request_body_mb * 1e6, body
        assert float(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > \
            s.request_timeout, notes
