"""The chart with its default values and the plain manifests describe the same deployment."""

from __future__ import annotations

import copy
from typing import Any

from tests.deploy.render import manifest_objects, namespace_free, one, render


def _by_kind() -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for _, o in manifest_objects()}


def _without(spec: dict[str, Any], *keys: str) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for k in keys:
        out.pop(k, None)
    return out


def test_inferenceservice_agrees() -> None:
    chart = one(render(), "InferenceService")
    plain = _by_kind()["InferenceService"]
    assert chart["metadata"]["name"] == plain["metadata"]["name"]
    assert chart["metadata"]["annotations"] == plain["metadata"]["annotations"]
    label = "networking.kserve.io/visibility"
    assert chart["metadata"]["labels"][label] == plain["metadata"]["labels"][label]
    for component in ("predictor", "transformer"):
        # The chart adds its own ServiceAccount; everything else must match field by field
        # (containers: image, command, args, env, ports, resources, probes, security).
        # The manifests name the predictor Service without the namespace (namespace_free).
        c, p = namespace_free(chart["spec"][component]), plain["spec"][component]
        assert _without(c, "serviceAccountName") == p, component


def test_weights_and_routes_agree() -> None:
    chart = render()
    plain = _by_kind()
    for kind in ("Ingress", "PersistentVolumeClaim"):
        assert one(chart, kind)["metadata"]["name"] == plain[kind]["metadata"]["name"], kind
        assert one(chart, kind)["spec"] == plain[kind]["spec"], kind
    assert one(chart, "Ingress")["metadata"]["annotations"] == plain["Ingress"]["metadata"][
        "annotations"]
    assert "Job" not in plain and "Job" not in {o["kind"] for o in chart}
    route = one(render({"route": {"kind": "httproute", "annotations": {}}}), "HTTPRoute")
    assert route["metadata"]["name"] == plain["HTTPRoute"]["metadata"]["name"]
    assert route["spec"] == plain["HTTPRoute"]["spec"]


def test_networkpolicies_agree() -> None:
    """manifests/base/networkpolicy.yaml is what the chart renders by default (hooks aside)."""
    chart = {o["metadata"]["name"]: o for o in render() if o["kind"] == "NetworkPolicy"}
    plain = {o["metadata"]["name"]: o for _, o in manifest_objects()
             if o["kind"] == "NetworkPolicy"}
    # The chart adds one for its `helm test` pod, which the plain manifests do not have.
    assert set(chart) - set(plain) == {"image-similarity-test"}, sorted(chart)
    assert set(plain) <= set(chart), sorted(plain)
    for name, policy in plain.items():
        assert chart[name]["spec"] == policy["spec"], name
