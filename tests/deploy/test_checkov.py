"""Static security scan (checkov) of the chart, the manifests and both Dockerfiles.

checkov has no checks for the InferenceService CRD, so each of its components is also
scanned as the Deployment that KServe's controller makes of it in Standard mode. Every
finding must be accepted, with its reason, in checkov_accepted.yaml; checkov runs once per
session (module-scoped fixture). checkov lives in its own venv (scripts/install_tools.sh).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.procs import REPO_ROOT
from tests.deploy.render import NAMESPACE, TOOLS_BIN, VALUE_SETS, manifest_files, render

ACCEPTED: dict[str, dict[str, Any]] = yaml.safe_load(
    Path(__file__).with_name("checkov_accepted.yaml").read_text())
# Pod-spec fields of a KServe component (everything else is KServe's own).
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
               "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
               "labels", "annotations", "deploymentStrategy", "autoScaling", "storageUris"}


def as_deployments(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    """The Deployments KServe Standard mode makes of an InferenceService's components.

    The pods carry the labels KServe's controller gives them (the InferenceService's labels,
    then ``serving.kserve.io/inferenceservice: <name>`` and ``component: <component>``
    (constants.InferenceServicePodLabelKey, constants.KServiceComponentLabel), and
    ``app: isvc.<name>-<component>`` in Standard mode), so that checkov connects them to the
    NetworkPolicies that select them by those labels.
    """
    out = []
    for component in ("predictor", "transformer"):
        spec = copy.deepcopy(isvc["spec"][component])
        pod = {k: v for k, v in spec.items() if k not in KSERVE_ONLY}
        name = f"{isvc['metadata']['name']}-{component}"
        meta = {"name": name, **({"namespace": isvc["metadata"]["namespace"]}
                                 if "namespace" in isvc["metadata"] else {})}
        selector = {"app": f"isvc.{name}"}
        labels = {**isvc["metadata"].get("labels", {}), **selector,
                  "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
                  "component": component}
        out.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                    "spec": {"replicas": spec.get("minReplicas", 1),
                             "selector": {"matchLabels": selector},
                             "template": {"metadata": {"labels": labels}, "spec": pod}}})
    return out


def _checkov() -> Path:
    exe = TOOLS_BIN / "checkov"
    if not exe.exists():
        subprocess.run([str(REPO_ROOT / "scripts" / "install_tools.sh"), "checkov"],
                       check=True, cwd=REPO_ROOT)
    return exe


def _run(exe: Path, *args: str) -> list[dict[str, Any]]:
    # No Prisma Cloud: skip the guideline download and any other network call.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
           "LOG_LEVEL": "WARNING"}
    proc = subprocess.run([str(exe), *args, "-o", "json", "--quiet", "--compact",
                           "--skip-download"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout) if proc.stdout.strip() else []
    reports = report if isinstance(report, list) else [report]
    failed = []
    for r in reports:
        if "results" in r:  # an empty scan answers {"passed": 0, ...}
            failed += r["results"]["failed_checks"]
    return failed


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    exe = _checkov()
    scan = tmp_path_factory.mktemp("checkov")
    objs: list[dict[str, Any]] = []
    for name in ("default", "httproute", "cpu", "autoscaling"):
        objs += render(VALUE_SETS[name], namespace=NAMESPACE)
    for path in manifest_files():
        shutil.copy(path, scan / f"manifests-{path.name}")
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "InferenceService":
                objs += as_deployments(doc)
    objs += [d for o in objs if o["kind"] == "InferenceService" for d in as_deployments(o)]
    (scan / "chart-rendered.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
    found = _run(exe, "-d", str(scan), "--framework", "kubernetes")
    found += _run(exe, "--framework", "dockerfile", "-f", str(REPO_ROOT / "Dockerfile.predictor"),
                  "-f", str(REPO_ROOT / "Dockerfile.transformer"))
    return found


def _accepted(finding: dict[str, Any]) -> bool:
    entry = ACCEPTED.get(finding["check_id"])
    if entry is None:
        return False
    kinds = entry.get("kinds")
    return kinds is None or finding["resource"].split(".")[0] in kinds


def test_no_unexplained_findings(findings: list[dict[str, Any]]) -> None:
    open_ = sorted({(f["check_id"], f["resource"], f["check_name"]) for f in findings
                    if not _accepted(f)})
    assert not open_, "checkov findings without a reason in checkov_accepted.yaml:\n" + "\n".join(
        f"  {cid} {res}: {name}" for cid, res, name in open_)


def test_accepted_list_is_current(findings: list[dict[str, Any]]) -> None:
    fired = {f["check_id"] for f in findings}
    stale = sorted(set(ACCEPTED) - fired)
    assert not stale, f"accepted checks that no longer fire (remove them): {stale}"
    assert all(e.get("reason") for e in ACCEPTED.values())


def test_scan_covers_the_components(findings: list[dict[str, Any]]) -> None:
    """The synthetic Deployments were scanned (a regression would hide the ISVC pods)."""
    resources = {f["resource"] for f in findings}
    assert any(r.startswith("Deployment.") and r.endswith("-predictor") for r in resources), (
        sorted(resources))
