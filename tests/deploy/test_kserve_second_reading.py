"""What KServe and Helm would still break, second reading (issue 18), on rendered objects,
the docs and the scripts.

Each test names the item of issue 18 it guards and the behaviour behind it (``K/`` is
KServe's ``pkg/``):

1. Helm runs no hook on upgrade, and a hook without a delete policy is deleted by the next
   install (``before-hook-creation``): the weights PVC is a plain release object.
2. Ready combines only PredictorReady and IngressReady, and IngressReady is True for a
   cluster-local InferenceService (``K/.../ingress/kube_ingress_reconciler.go``): waits
   include TransformerReady and both rollouts; the helm-test pod retries /health.
3. ``K/.../service/service_reconciler.go``: the first container port becomes port 80, the
   others are exposed as themselves; a headless Service (serviceClusterIPNone) maps nothing.
4. round_robin needs a headless Service, which KServe does not create.
5. ``K/.../hpa/hpa_reconciler.go``: a memory metric only with a scaleTarget.
6. ReadWriteOnce scale-out: a podAffinity keeps the predictor pods on one node.
7. Workload identity needs the node's metadata endpoint.
8. hpa -> keda in one upgrade races KEDA's webhook: documented in two steps.
9. ``K/.../components/predictor.go``: InferenceService labels reach the pod templates.
10. ``--reuse-values`` drops a newer chart's defaults.
11. The smaller ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.http_host import Handler as QuietHandler
from testing.http_host import serving
from testing.procs import REPO_ROOT
from tests.deploy.render import (
    CHART,
    VALUE_SETS,
    arg_value,
    container,
    env_of,
    helm,
    manifest_objects,
    one,
    render,
)

DOCS = REPO_ROOT / "docs" / "deploy.md"
KIND = REPO_ROOT / "scripts" / "kind_test.sh"
WAIT = REPO_ROOT / "scripts" / "wait_ready.sh"
NS = "image-similarity"
NAME = "image-similarity"


def docs() -> str:
    return DOCS.read_text()


def notes(values: dict[str, Any] | None = None, release: str = "demo", ns: str = "ml") -> str:
    out = helm("install", release, str(CHART), "--dry-run=client", "-n", ns,
               values=values or {}).stdout
    return out[out.index("NOTES:"):]


def template(release: str, values: dict[str, Any] | None = None,
             chart: Path = CHART, ns: str = NS) -> subprocess.CompletedProcess[str]:
    return helm("template", release, str(chart), "--namespace", ns, values=values,
                check=False)


def section(text: str, heading: str) -> str:
    """The markdown section under ``heading`` (up to the next heading of any level; a
    ``# comment`` inside a code block is no heading)."""
    lines = text[text.index(heading) + len(heading):].splitlines(keepends=True)
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            break
        out.append(line)
    return "".join(out)


def isvc_of(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return one(render(values), "InferenceService")


# ---------------------------------------------------------------- 1. the weights PVC


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_weights_pvc_is_a_plain_kept_release_object(name: str) -> None:
    """A pre-install hook is never created by `helm upgrade` (the predictor stays Pending)
    and, with no delete policy, is deleted by the next `helm install` of that name."""
    for obj in render(VALUE_SETS[name]):
        if obj["kind"] == "PersistentVolumeClaim":
            ann = obj["metadata"].get("annotations", {})
            assert not any(k.startswith("helm.sh/hook") for k in ann), ann
            assert ann["helm.sh/resource-policy"] == "keep"


def test_docs_explain_how_an_existing_claim_is_adopted() -> None:
    """A claim from a hook (older chart) or another release has no ownership metadata: Helm
    refuses it until it is annotated and labelled."""
    text = docs()
    storage = section(text, "### Storage requirements")
    assert "plain release object" in storage and "helm.sh/resource-policy: keep" in storage
    annotate = re.search(r"kubectl -n \S+ annotate pvc \S+-weights[^\n]*\\?\n?[^\n]*", text)
    assert annotate, "no kubectl annotate step for the weights PVC"
    block = text[annotate.start(): annotate.start() + 600]
    assert "meta.helm.sh/release-name=" in block and "meta.helm.sh/release-namespace=" in block
    assert re.search(r"kubectl -n \S+ label pvc \S+-weights[^\n]*app\.kubernetes\.io/managed-by="
                     r"Helm", text), "no kubectl label step"


# ---------------------------------------------------------------- 2. waits


def _waits_ok(text: str, where: str) -> None:
    """Both Deployments rolled out (retried past the progress deadline), TransformerReady."""
    for component in ("predictor", "transformer"):
        assert re.search(rf"rollout status\s+\S*deployment/\S*(-{component}|-\$c|-\$\{{?c\}}?)",
                         text), (where, component)
    assert re.search(r"\bfor c in predictor transformer\b|predictor.*transformer", text), where
    assert "until " in text and "rollout status" in text, f"{where}: no retry of rollout status"
    assert "--for=condition=TransformerReady" in text, where


def test_notes_wait_for_both_components() -> None:
    text = notes()
    _waits_ok(text, "NOTES")
    first = text.index("--for=condition=TransformerReady")
    assert first < text.index("--for=condition=Ready "), "transformer first, then Ready"


def test_docs_wait_for_both_components() -> None:
    text = docs()
    _waits_ok(text, "docs/deploy.md")
    # No wait on Ready alone, right before `helm test` or anywhere else.
    for m in re.finditer(r"kubectl[^\n]*wait[^\n]*--for=condition=Ready\b", text):
        before = text[max(0, m.start() - 1200): m.start()]
        assert "TransformerReady" in before or "wait_ready.sh" in before, text[
            m.start() - 200: m.end()]


def test_kind_script_and_docs_use_the_same_wait() -> None:
    script = KIND.read_text()
    assert "scripts/wait_ready.sh" in script and "scripts/wait_ready.sh" in docs()
    _waits_ok(WAIT.read_text(), "wait_ready.sh")


FAKE_KUBECTL = """#!/usr/bin/env bash
# Stand-in for kubectl (no cluster here): logs its arguments; `rollout status` of the
# predictor fails FAIL_ROLLOUTS times with kubectl's progress-deadline message first.
echo "$*" >> "$KLOG"
if [[ "$*" == *"rollout status deployment/${ISVC}-predictor"* ]]; then
    n=$(cat "$KCOUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$KCOUNT"
    if (( n < FAIL_ROLLOUTS )); then
        echo "error: deployment \\"${ISVC}-predictor\\" exceeded its progress deadline" >&2
        exit 1
    fi
fi
# LAG=1: KServe leaves status.observedGeneration one behind until the object is touched.
if [[ ${LAG:-0} == 1 ]]; then
    case "$*" in
        *"jsonpath={.metadata.generation}"*) echo 3 ;;
        *"jsonpath={.status.observedGeneration}"*)
            if [[ -f "$KCOUNT.nudged" ]]; then echo 3; else echo 2; fi ;;
        *" annotate "*) touch "$KCOUNT.nudged" ;;
    esac
fi
exit 0
"""


def _wait_ready(tmp_path: Path, fails: int, timeout_s: int, **extra: str) -> tuple[
        subprocess.CompletedProcess[str], list[str], float]:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "KUBECTL": str(kubectl), "KLOG": str(log), "KCOUNT": str(
        tmp_path / "count"), "FAIL_ROLLOUTS": str(fails), "ISVC": "sim",
        "WAIT_READY_RETRY_S": "0.2", **extra}
    start = time.monotonic()
    proc = subprocess.run(["bash", str(WAIT), "dreamsim", "sim", str(timeout_s)], env=env,
                          capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls, time.monotonic() - start


def test_wait_script_retries_past_the_progress_deadline(tmp_path: Path) -> None:
    """A first start longer than the Deployment's 600 s progress deadline makes `rollout
    status` exit with an error while the pod is still fetching: the wait goes on."""
    proc, calls, _ = _wait_ready(tmp_path, fails=2, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    pred = [c for c in calls if "deployment/sim-predictor" in c]
    assert len(pred) == 3 and all(c.startswith("-n dreamsim rollout status") for c in pred)
    order = [next(i for i, c in enumerate(calls) if key in c) for key in (
        "deployment/sim-predictor", "deployment/sim-transformer",
        "--for=condition=TransformerReady", "--for=condition=Ready ")]
    assert order == sorted(order), calls
    assert "progress deadline" in proc.stderr


def test_wait_script_nudges_kserve_when_its_observed_generation_lags(tmp_path: Path) -> None:
    """Seen on the cluster lab (KServe v0.20, a replicas-only upgrade): observedGeneration
    stayed one behind with every condition True, so `kubectl wait --for=condition` never
    returned. The script touches an annotation, once the rollouts are done, and goes on."""
    proc, calls, _ = _wait_ready(tmp_path, fails=0, timeout_s=60, LAG="1",
                                 WAIT_READY_NUDGE_S="1")
    assert proc.returncode == 0, proc.stderr
    nudges = [c for c in calls if " annotate " in f" {c} "]
    assert len(nudges) == 1 and "reconcile-nudge=" in nudges[0], calls
    order = [next(i for i, c in enumerate(calls) if key in c) for key in (
        "deployment/sim-transformer", " annotate ", "--for=condition=TransformerReady")]
    assert order == sorted(order), calls
    assert "observedGeneration lags" in proc.stderr


def test_wait_script_gives_up_at_its_deadline(tmp_path: Path) -> None:
    proc, calls, took = _wait_ready(tmp_path, fails=10_000, timeout_s=2)
    assert proc.returncode != 0
    assert "sim-predictor" in proc.stderr and "2 s" in proc.stderr, proc.stderr
    assert took < 20 and not [c for c in calls if "condition=" in c]


class _LoadingTransformer(QuietHandler):
    """Stand-in for a transformer whose predictor is still loading (a real one would need a
    predictor that becomes ready on cue): /health answers 503 twice, then healthy;
    /similarity answers one pair of identical images."""

    health_calls = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).health_calls += 1
        if type(self).health_calls <= 2:
            self.reply_json(503, {"status": "unhealthy", "model_loaded": False})
        else:
            self.reply_json(200, {"status": "healthy", "model_loaded": True})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        (pair,) = body["pairs"]
        self.reply_json(200, {"scores": [{"pair_id": pair["pair_id"], "distance": 0.0,
                                         "similarity": 1.0}]})


@pytest.fixture
def loading_transformer() -> Iterator[str]:
    _LoadingTransformer.health_calls = 0
    with serving(_LoadingTransformer) as url:
        yield url


def test_helm_test_pod_retries_health(loading_transformer: str) -> None:
    """The rendered test pod's own script, run for real: a 503 while the model loads is
    asked again, not a failed `helm test`."""
    pod = one(render(), "Pod")
    (c,) = pod["spec"]["containers"]
    env = {**os.environ, **env_of(c), "BASE_URL": loading_transformer}
    if "HEALTH_TIMEOUT_S" in env:
        env["HEALTH_TIMEOUT_S"] = "60"
    assert c["command"][:2] == ["python3", "-c"]
    proc = subprocess.run([sys.executable, "-c", c["command"][2]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")
    assert _LoadingTransformer.health_calls == 3


# ---------------------------------------------------------------- 3. the predictor's port


def kserve_service_ports(pod_ports: list[dict[str, Any]]) -> dict[int, int]:
    """Service port -> target port as KServe's createDefaultSvc builds them."""
    out = {80: pod_ports[0]["containerPort"]}
    for p in pod_ports[1:]:
        out[p["containerPort"]] = p["containerPort"]
    return out


@pytest.mark.parametrize("source", ["chart", "manifests"])
def test_transformer_dials_the_grpc_port_as_itself(source: str) -> None:
    """The host carries 8081, which KServe's Service maps to 8081 (ClusterIP) and which is
    the pod's own port (headless): it works for both kinds of Service."""
    if source == "chart":
        isvc = isvc_of()
    else:
        (isvc,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    pred, tr = container(isvc, "predictor"), container(isvc, "transformer")
    grpc = int(arg_value(pred["args"], "--grpc_port") or 0)
    host = arg_value(tr["args"], "--predictor_host")
    assert host is not None, "left to the controller: no port, the client dials 80"
    name, _, port = host.rpartition(":")
    assert int(port) == grpc
    expected = f"{NAME}-predictor.{NS}" if source == "chart" else f"{NAME}-predictor"
    assert name == expected
    ports = kserve_service_ports(pred["ports"])
    assert ports[int(port)] == grpc, "ClusterIP Service: the host's port reaches gRPC"
    assert ports[80] == 8080, "port 80 is HTTP (probes, metrics)"
    assert "PREDICTOR_LB_POLICY" not in env_of(tr)


def test_transformer_client_keeps_the_port_it_is_given() -> None:
    """transformer/predictor_client.py adds :80 only to a host without a port."""
    import asyncio

    from transformer.predictor_client import PredictorClient

    async def hosts() -> list[str]:
        out = []
        for h in ("sim-predictor.ml:8081", "dns:///sim-predictor-headless.ml:8081",
                  "sim-predictor.ml"):
            client = PredictorClient(h, model_name="dreamsim", timeout_s=1)
            out.append(client.host)
            await client.close()
        return out

    assert asyncio.run(hosts()) == ["sim-predictor.ml:8081",
                                    "dns:///sim-predictor-headless.ml:8081",
                                    "sim-predictor.ml:80"]


# ---------------------------------------------------------------- 4. round_robin


def test_round_robin_renders_a_headless_service_and_dns_host() -> None:
    objs = render({"transformer": {"predictorLbPolicy": "round_robin"}})
    isvc = one(objs, "InferenceService")
    tr = container(isvc, "transformer")
    assert env_of(tr)["PREDICTOR_LB_POLICY"] == "round_robin"
    assert arg_value(tr["args"], "--predictor_host") == (
        f"dns:///{NAME}-predictor-headless.{NS}:8081")
    svc = one(objs, "Service")
    assert svc["metadata"]["name"] == f"{NAME}-predictor-headless"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"serving.kserve.io/inferenceservice": NAME,
                                       "component": "predictor"}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8081, 8081)]
    assert not svc["spec"].get("publishNotReadyAddresses"), "only ready pods in DNS"
    assert "Service" not in {o["kind"] for o in render()}


def test_round_robin_schema_refuses_other_policies() -> None:
    proc = template("x", {"fullnameOverride": "x",
                          "transformer": {"predictorLbPolicy": "least_request"}})
    assert proc.returncode != 0 and "predictorLbPolicy" in proc.stderr


def test_manifests_offer_the_headless_service() -> None:
    objs = {o["metadata"]["name"]: o for _, o in manifest_objects() if o["kind"] == "Service"}
    chart = one(render({"transformer": {"predictorLbPolicy": "round_robin"}}), "Service")
    assert objs[f"{NAME}-predictor-headless"]["spec"] == chart["spec"]


# ---------------------------------------------------------------- 5. memory without a target


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_memory_metric_needs_a_target(component: str) -> None:
    autoscaling: dict[str, Any] = {"class": "hpa", "metric": "memory"}
    values: dict[str, Any] = {"fullnameOverride": "x", component: {
        "minReplicas": 1, "maxReplicas": 3, "autoscaling": autoscaling}}
    proc = template("x", values)
    assert proc.returncode != 0
    assert f"{component}.autoscaling.target" in proc.stderr and "CPU at 80%" in proc.stderr
    autoscaling["target"] = 70
    assert template("x", values).returncode == 0


# ---------------------------------------------------------------- 6. RWO scale-out


def _pod_affinity(isvc: dict[str, Any]) -> Any:
    return isvc["spec"]["predictor"].get("affinity", {}).get("podAffinity")


@pytest.mark.parametrize("predictor", [
    {"minReplicas": 1, "maxReplicas": 3, "autoscaling": {"class": "hpa", "target": 70}},
    {"minReplicas": 1, "maxReplicas": 3, "autoscaling": {"class": "keda"}},
    {"minReplicas": 2, "maxReplicas": 2},
    {"deploymentStrategy": {"type": "RollingUpdate"}},
])
def test_rwo_scale_out_keeps_predictors_on_one_node(predictor: dict[str, Any]) -> None:
    """GPU profile, default ReadWriteOnce PVC: extra pods on other nodes hang on
    Multi-Attach, so they must follow the pod that holds the volume."""
    aff = _pod_affinity(isvc_of({"predictor": predictor}))
    assert aff == {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": NAME,
                                          "component": "predictor"}}}]}


def test_rwo_affinity_only_where_needed() -> None:
    assert "affinity" not in isvc_of()["spec"]["predictor"], "one pod, Recreate"
    assert _pod_affinity(isvc_of(VALUE_SETS["rolling-rwx"])) is None, "ReadWriteMany"
    assert _pod_affinity(isvc_of({"weights": {"source": "storageUri",
                                              "storageUri": "gs://b/w"},
                                  "predictor": {"maxReplicas": 3}})) is None
    # The user's own node affinity stays, the pod affinity joins it.
    gpu2 = VALUE_SETS["gpu2"]["predictor"]
    aff = isvc_of({"predictor": {**gpu2, "maxReplicas": 2}})["spec"]["predictor"]["affinity"]
    assert aff["nodeAffinity"] == gpu2["affinity"]["nodeAffinity"] and aff["podAffinity"]
    # A podAffinity of the user's own is left alone (the CPU profile's, for instance).
    cpu = isvc_of(VALUE_SETS["cpu-profile"])["spec"]["predictor"]["affinity"]
    assert set(cpu) == {"podAffinity"}
    (term,) = cpu["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    own = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 1, "podAffinityTerm": {"topologyKey": "topology.kubernetes.io/zone",
                                         "labelSelector": {"matchLabels": {"a": "b"}}}}]}}
    mine = isvc_of({"predictor": {"maxReplicas": 2, "affinity": own}})
    assert mine["spec"]["predictor"]["affinity"] == own


# ---------------------------------------------------------------- 7. workload identity


def _predictor_egress(values: dict[str, Any]) -> list[dict[str, Any]]:
    (np,) = [o for o in render(values) if o["kind"] == "NetworkPolicy"
             and o["metadata"]["name"] == f"{NAME}-predictor"]
    rules: list[dict[str, Any]] = np["spec"]["egress"]
    return rules


def _metadata_peers(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(peer["ipBlock"]["cidr"], port["port"]) for r in rules for peer in r.get("to", [])
            if "ipBlock" in peer and peer["ipBlock"]["cidr"].startswith("169.254.")
            for port in r.get("ports", [])}


METADATA = {("169.254.169.254/32", 80), ("169.254.169.252/32", 988),
            ("169.254.170.23/32", 80)}


@pytest.mark.parametrize(("uri", "on"), [("gs://models/dreamsim", True),
                                         ("s3://models/dreamsim", True),
                                         ("https://example.com/w.tar.gz", False),
                                         ("pvc://claim/w", False)])
def test_workload_identity_egress_by_default_for_buckets(uri: str, on: bool) -> None:
    """GKE (and Dataplane V2), EKS Pod Identity and Azure hand out credentials at a
    link-local metadata address, which the public-address egress excepts."""
    rules = _predictor_egress({"weights": {"source": "storageUri", "storageUri": uri}})
    assert _metadata_peers(rules) == (METADATA if on else set())


def test_workload_identity_value() -> None:
    off = {"weights": {"source": "storageUri", "storageUri": "gs://m/w"},
           "networkPolicy": {"predictor": {"workloadIdentity": {"enabled": False}}}}
    assert not _metadata_peers(_predictor_egress(off))
    on = {"networkPolicy": {"predictor": {"workloadIdentity": {
        "enabled": True, "endpoints": [{"cidr": "169.254.169.254/32", "ports": [80]}]}}}}
    assert _metadata_peers(_predictor_egress(on)) == {("169.254.169.254/32", 80)}
    assert not _metadata_peers(_predictor_egress({}))


# ---------------------------------------------------------------- 8. hpa -> keda


def test_docs_switch_hpa_to_keda_in_two_steps() -> None:
    """KServe deletes its HPA only on a later reconcile, and KEDA's webhook refuses a
    ScaledObject whose Deployment still has one: go through class none first."""
    text = section(docs(), "### Scaling")
    step1 = re.search(r"helm upgrade[^\n]*(\\\n[^\n]*)*autoscaling\.class=none", text)
    step2 = re.search(r"helm upgrade[^\n]*(\\\n[^\n]*)*autoscaling\.class=keda", text)
    assert step1 and step2 and step1.start() < step2.start(), "two upgrades: none, then keda"
    between = text[step1.end(): step2.start()]
    assert re.search(r"kubectl[^\n]*get hpa", between), "check the HPA is gone in between"


# ---------------------------------------------------------------- 9. version labels


def test_chart_release_does_not_change_the_inferenceservice(tmp_path: Path) -> None:
    """KServe copies the InferenceService's labels into the pod templates: a chart release
    with the same images must render the same InferenceService (no predictor restart)."""
    bumped = tmp_path / "chart"
    shutil.copytree(CHART, bumped)
    meta = yaml.safe_load((bumped / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = "9.9.9", "9.9.9"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(meta))
    tags = {"fullnameOverride": NAME, "predictor": {"image": {"tag": "0.1.0"}},
            "transformer": {"image": {"tag": "0.1.0"}}}

    def isvc(chart: Path) -> dict[str, Any]:
        proc = template(NAME, tags, chart=chart)
        assert proc.returncode == 0, proc.stderr
        return one([d for d in yaml.safe_load_all(proc.stdout) if d], "InferenceService")

    old, new = isvc(CHART), isvc(bumped)
    assert old == new
    for key in ("helm.sh/chart", "app.kubernetes.io/version"):
        assert key not in old["metadata"]["labels"], key
        for component in ("predictor", "transformer"):
            assert key not in old["spec"][component].get("labels", {}), key


# ---------------------------------------------------------------- 10. reuse-values


def test_docs_upgrade_without_plain_reuse_values() -> None:
    """--reuse-values keeps the old release's values and drops defaults a newer chart adds
    (a new required value renders as null)."""
    text = docs()
    assert not re.search(r"--reuse-values", text.replace("--reset-then-reuse-values", "")
                         .replace("`--reuse-values`", "")), "plain --reuse-values in a command"
    assert re.search(r"helm upgrade[^\n]*--reset-then-reuse-values", text)
    assert "3.14" in text


# ---------------------------------------------------------------- 11. smaller ones


@pytest.mark.parametrize("path", [DOCS, KIND])
def test_kserve_installed_without_istio_virtual_host(path: Path) -> None:
    """Without Istio every reconcile otherwise emits a warning event."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    (line,) = [ln for ln in joined.splitlines() if "charts/kserve-resources" in ln
               and "oci://" in ln and re.search(r"\binstall\b", ln)]
    assert "--set kserve.controller.gateway.disableIstioVirtualHost=true" in line, line


def test_status_url_caveat() -> None:
    for text in (docs(), notes()):
        assert "status.url" in text and "serves nothing" in text


def test_docs_troubleshoot_fetch_weights() -> None:
    """KServe's model status reports only an init container named storage-initializer."""
    text = section(docs(), "### Troubleshooting")
    assert "fetch-weights" in text and "storage-initializer" in text
    assert re.search(r"kubectl[^\n]*get events", text)
    assert re.search(r"kubectl[^\n]*logs[^\n]*-c fetch-weights[^\n]*--previous", text)
    assert "ProgressDeadlineExceeded" in text


@pytest.mark.parametrize("path", [DOCS, KIND])
def test_no_false_chart_split_note(path: Path) -> None:
    """kserve-crd and kserve-resources both exist since v0.11: nothing was split in 0.17."""
    text = path.read_text()
    assert not re.search(r"split[^\n]*0\.17|0\.17[^\n]*split|renamed[^\n]*0\.17", text)


@pytest.mark.parametrize("release", ["1sim", "sim.prod", "9"])
def test_release_names_kserve_rejects(release: str) -> None:
    """KServe's InferenceService name rule: a DNS-1035 label."""
    proc = template(release, {})
    assert proc.returncode != 0, proc.stdout[:200]
    assert "KServe would refuse the InferenceService name" in proc.stderr, proc.stderr
    assert "fullnameOverride" in proc.stderr
    assert template(release, {"fullnameOverride": "sim"}).returncode == 0


def test_progress_deadline_documented() -> None:
    text = docs()
    assert "progressDeadlineSeconds" in text and "600" in text


@pytest.mark.parametrize("source", ["pvc", "existingClaim"])
def test_storage_uri_in_extra_env_refused_with_a_claim(source: str) -> None:
    """A second /mnt/models mount (KServe's storage initializer) makes the pod invalid."""
    values: dict[str, Any] = {
        "fullnameOverride": "x", "weights": {"source": source, "existingClaim": "w"},
        "predictor": {"extraEnv": [{"name": "STORAGE_URI", "value": "s3://b/w"}]}}
    proc = template("x", values)
    assert proc.returncode != 0 and "extraEnv" in proc.stderr, proc.stderr
    values["predictor"]["extraEnv"] = [{"name": "OTHER", "value": "1"}]
    assert template("x", values).returncode == 0


def test_docs_lead_with_the_gateway_api() -> None:
    """ingress-nginx, the default route.className, is retired upstream."""
    steps = section(docs(), "### A fresh cluster, step by step")
    assert "route.kind=httproute" in steps
    assert steps.index("Gateway") < steps.index("ingress-nginx")
    prereq = section(docs(), "### Prerequisites")
    assert prereq.index("Gateway API") < prereq.index("ingress-nginx")
    assert "retired" in docs()


# --- found live on the cluster lab (issue 17) -------------------------------------------------

def _transformer_pod(isvc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = isvc["spec"]["transformer"]
    return spec, next(c for c in spec["containers"] if c["name"] == "kserve-container")


@pytest.mark.parametrize("source", ["chart", "manifests"])
def test_a_terminating_transformer_serves_until_its_endpoints_are_gone(source: str) -> None:
    """Deleting one of two transformer pods under load gave clients connection errors on the
    cluster lab: the Service still sent the terminating pod new connections for a moment.
    A preStop sleep keeps it serving while its endpoints drop; the grace period covers the
    sleep and SHUTDOWN_GRACE_PERIOD's drain (30 s) after it."""
    isvc = (one(render(), "InferenceService") if source == "chart"
            else one([doc for path, doc in manifest_objects()
                      if path.name == "inferenceservice.yaml"], "InferenceService"))
    spec, main = _transformer_pod(isvc)
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 3, command
    shutdown = int(env_of(main).get("SHUTDOWN_GRACE_PERIOD", "30"))
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + shutdown + 3, spec


def test_the_presleep_can_be_switched_off() -> None:
    spec, main = _transformer_pod(one(render({"transformer": {"preStopSleepSeconds": 0}}),
                                      "InferenceService"))
    assert "lifecycle" not in main
    assert spec["terminationGracePeriodSeconds"] == 40


def test_reuse_values_from_an_older_release_keeps_the_transformer_valid() -> None:
    """`helm upgrade --reuse-values` from a release made before these values existed
    passes none of them: the InferenceService must still get an integer grace period and
    the default sleep (seen live: KServe's CRD refused a null terminationGracePeriodSeconds)."""
    older = {"transformer": {"preStopSleepSeconds": None,
                             "terminationGracePeriodSeconds": None}}
    spec, main = _transformer_pod(one(render(older), "InferenceService"))
    assert spec["terminationGracePeriodSeconds"] == 40
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]

