"""The chart's NetworkPolicies: who reaches the predictor, where the transformer may go.

Strict schema validation of the rendered policies happens with every other object in
test_validate.py (the ``netpol-*`` value sets); parity with manifests/base/networkpolicy.yaml in
test_parity.py. Here: selectors, ports, peers and ipBlocks, for the defaults and each option.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.render import VALUE_SETS, manifest_objects, render
from tests.deploy.test_checkov import as_deployments

# Every range the transformer's SSRF policy blocks that a NetworkPolicy can express for IPv4
# (loopback never leaves the pod, but is listed all the same).
BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.168.0.0/16"]
KSERVE_PREDICTOR = {"serving.kserve.io/inferenceservice": "image-similarity",
                    "component": "predictor"}
KSERVE_TRANSFORMER = {"serving.kserve.io/inferenceservice": "image-similarity",
                      "component": "transformer"}
KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
# The DNS pods' own ports: 53, and 5353 where DNS listens unprivileged (the cluster lab's
# CoreDNS, OpenShift's): a policy matches the pod's port, not the Service's 53.
DNS_PORTS = [{"port": p, "protocol": proto} for p in (53, 5353) for proto in ("UDP", "TCP")]
# The transformer calls the predictor over gRPC only (issue 9 defect 10: 8080 was open too).
GRPC_PORT = [{"port": 8081, "protocol": "TCP"}]


def policies(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The rendered NetworkPolicies by name, without the ``image-similarity-`` prefix."""
    return {o["metadata"]["name"].removeprefix("image-similarity-"): o
            for o in render(values) if o["kind"] == "NetworkPolicy"}


def ports_of(rule: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p["protocol"]) for p in rule.get("ports", [])}


def ip_blocks(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [peer["ipBlock"] for peer in rule.get("to", []) if "ipBlock" in peer]


def is_metadata_rule(rule: dict[str, Any]) -> bool:
    """The workload-identity rule: only link-local /32s (cloud metadata endpoints)."""
    blocks = ip_blocks(rule)
    return bool(blocks) and len(blocks) == len(rule["to"]) and all(
        ipaddress.IPv4Network(b["cidr"]).subnet_of(ipaddress.IPv4Network("169.254.0.0/16"))
        and "except" not in b for b in blocks)


def web_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """Egress rules that open TCP 80 or 443 (the workload-identity rule aside)."""
    return [r for r in policy["spec"]["egress"]
            if ports_of(r) & {(80, "TCP"), (443, "TCP")} and not is_metadata_rule(r)]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels-only label selector selects ``labels``."""
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_default_policies() -> None:
    nps = policies()
    assert sorted(nps) == ["predictor", "test", "transformer"]
    for np in nps.values():
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
        kubernetes_validate.validate(np, "1.32.0", strict=True)

    pred = nps["predictor"]["spec"]
    assert pred["podSelector"] == {"matchLabels": KSERVE_PREDICTOR}
    # Ingress: the transformer only, on the gRPC port only.
    assert pred["ingress"] == [{"from": [{"podSelector": {"matchLabels": KSERVE_TRANSFORMER}}],
                                "ports": GRPC_PORT}]
    # Egress: DNS, and HTTPS to public addresses for the init container filling the PVC.
    dns, https = pred["egress"]
    assert dns == {"to": [KUBE_DNS], "ports": DNS_PORTS}
    assert ports_of(https) == {(443, "TCP")}
    assert ip_blocks(https) == [{"cidr": "0.0.0.0/0", "except": BLOCKED_V4}]

    tr = nps["transformer"]["spec"]
    assert tr["podSelector"] == {"matchLabels": KSERVE_TRANSFORMER}
    assert tr["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}], "from anywhere"
    to_pred, dns, web = tr["egress"]
    assert to_pred == {"to": [{"podSelector": {"matchLabels": KSERVE_PREDICTOR}}],
                       "ports": GRPC_PORT}
    assert dns == {"to": [KUBE_DNS], "ports": DNS_PORTS}
    assert ports_of(web) == {(80, "TCP"), (443, "TCP")}
    assert web["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": BLOCKED_V4}}]

    test = nps["test"]
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "ingress" not in test["spec"]
    to_tr, dns = test["spec"]["egress"]
    assert to_tr == {"to": [{"podSelector": {"matchLabels": KSERVE_TRANSFORMER}}],
                     "ports": [{"port": 8080, "protocol": "TCP"}]}


def test_excepted_ranges_cover_metadata_and_private_networks() -> None:
    """No address an SSRF would aim at is inside the allowed web egress."""
    (web,) = web_rules(policies()["transformer"])
    (block,) = ip_blocks(web)
    excepted = [ipaddress.ip_network(c) for c in block["except"]]
    for target in ("169.254.169.254", "10.96.0.1", "172.17.0.1", "192.168.1.1", "127.0.0.1",
                   "100.100.100.200", "0.0.0.0"):
        assert any(ipaddress.ip_address(target) in n for n in excepted), target
    for public in ("140.82.112.4", "157.240.1.1", "8.8.8.8"):  # github.com, fbcdn, DNS
        assert not any(ipaddress.ip_address(public) in n for n in excepted), public
    assert all(n.subnet_of(ipaddress.ip_network(block["cidr"])) for n in excepted)  # type: ignore[arg-type]


def test_selectors_select_the_pods() -> None:
    """Each policy selects the pods it is meant for, with the labels they really carry."""
    objs = render()
    nps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    isvc = next(o for o in objs if o["kind"] == "InferenceService")
    pods = {d["metadata"]["name"].removeprefix("image-similarity-"):
            d["spec"]["template"]["metadata"]["labels"] for d in as_deployments(isvc)}
    pods["test"] = next(o for o in objs if o["kind"] == "Pod")["metadata"]["labels"]
    for name, labels in pods.items():
        selected = [n for n, np in nps.items() if matches(np["spec"]["podSelector"], labels)]
        assert selected == [f"image-similarity-{name}"], (name, selected)


def test_disabled_renders_none() -> None:
    assert not policies(VALUE_SETS["netpol-off"])
    assert "NetworkPolicy" not in {o["kind"] for o in render(VALUE_SETS["netpol-off"])}


def test_url_egress_off() -> None:
    tr = policies(VALUE_SETS["netpol-no-url"])["transformer"]
    assert not web_rules(tr), tr["spec"]["egress"]
    assert not any(ip_blocks(r) for r in tr["spec"]["egress"])
    # Still reaches the predictor and the DNS.
    assert [ports_of(r) for r in tr["spec"]["egress"]] == [
        {(8081, "TCP")}, {(p, proto) for p in (53, 5353) for proto in ("UDP", "TCP")}]


def test_custom_options() -> None:
    nps = policies(VALUE_SETS["netpol-custom"])
    monitoring = {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}
    node_dns = {"ipBlock": {"cidr": "169.254.20.10/32"}}

    pred = nps["predictor"]["spec"]
    assert pred["ingress"][1] == {"from": [monitoring],
                                  "ports": [{"port": 8080, "protocol": "TCP"}]}
    # s3://: the metadata endpoints for workload identity too (issue 18).
    dns, storage, *metadata, extra = pred["egress"]
    assert metadata and all(is_metadata_rule(r) for r in metadata), metadata
    assert dns["to"] == [node_dns]
    assert storage["ports"] == [{"port": 9000, "protocol": "TCP"}], "storageEgress replaces 443"
    assert extra["ports"] == [{"port": 15012, "protocol": "TCP"}]

    tr = nps["transformer"]["spec"]
    (ingress,) = tr["ingress"]
    assert ingress["from"][0] == {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}}
    assert ingress["from"][1]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "test", "helm test still reaches the transformer"
    assert ingress["from"][2] == monitoring
    (web,) = web_rules(nps["transformer"])
    assert ports_of(web) == {(443, "TCP"), (9000, "TCP")}
    assert ip_blocks(web) == [
        {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]},
        {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10", "::1/128"]},
        {"cidr": "10.20.0.0/16"}, {"cidr": "fd00:1::/64"}]


@pytest.mark.parametrize(("uri", "downloads"), [
    ("gs://models/dreamsim", True),
    ("s3://models/dreamsim", True),
    ("https://example.com/dreamsim.tar.gz", True),
    ("hf://org/dreamsim", True),
    ("pvc://claim/dreamsim", False),
    ("oci://registry/dreamsim:1", False),
])
def test_storage_download_egress(uri: str, downloads: bool) -> None:
    """The storage initializer runs in the predictor pod: HTTPS out only when it downloads."""
    pred = policies({"weights": {"source": "storageUri", "storageUri": uri}})["predictor"]
    rules = web_rules(pred)
    if downloads:
        (rule,) = rules
        assert ports_of(rule) == {(443, "TCP")}
        assert ip_blocks(rule) == [{"cidr": "0.0.0.0/0", "except": BLOCKED_V4}]
    else:
        assert not rules


@pytest.mark.parametrize(("weights", "downloads"), [
    ({"source": "pvc"}, True),
    ({"source": "existingClaim", "existingClaim": "w"}, True),
    ({"source": "existingClaim", "existingClaim": "w", "fetch": {"enabled": False}}, False),
    ({"source": "pvc", "fetch": {"enabled": False}}, False),
])
def test_init_container_egress(weights: dict[str, Any], downloads: bool) -> None:
    """HTTPS out of the predictor pod exactly when its init container fetches the weights."""
    assert bool(web_rules(policies({"weights": weights})["predictor"])) is downloads


def test_pod_labels_override() -> None:
    nps = policies({"networkPolicy": {"podLabels": {"predictor": {"app": "pred"},
                                                    "transformer": {"app": "tr"}}}})
    assert nps["predictor"]["spec"]["podSelector"] == {"matchLabels": {"app": "pred"}}
    assert nps["predictor"]["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app": "tr"}}}]
    assert nps["transformer"]["spec"]["egress"][0]["to"] == [
        {"podSelector": {"matchLabels": {"app": "pred"}}}]


def test_manifests_have_the_same_policies() -> None:
    """manifests/base/networkpolicy.yaml selects the InferenceService of manifests/."""
    (isvc,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    nps = {o["metadata"]["name"]: o for _, o in manifest_objects()
           if o["kind"] == "NetworkPolicy"}
    assert sorted(nps) == ["image-similarity-predictor", "image-similarity-transformer"]
    name = isvc["metadata"]["name"]
    sel = nps["image-similarity-predictor"]["spec"]["podSelector"]["matchLabels"]
    assert sel["serving.kserve.io/inferenceservice"] == name
    assert nps["image-similarity-predictor"]["spec"]["ingress"][0]["ports"] == GRPC_PORT
