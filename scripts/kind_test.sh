#!/usr/bin/env bash
# `make kind-test`: the whole deployment on a throw-away kind cluster, CPU only.
#   1. create a kind cluster (ingress-ready node, host port $KIND_HTTP_PORT -> 80)
#   2. install cert-manager, ingress-nginx and KServe (Standard mode)
#   3. build both images and load them into the cluster
#   4. run tests/deploy/test_cluster.py: it copies random test weights into a PVC, installs
#      the chart with tests/deploy/values-kind.yaml, waits for it and calls the Ingress
#      ($WAIT_READY is the documented wait, scripts/wait_ready.sh: both rollouts,
#      TransformerReady, then Ready)
#   5. delete the cluster (KIND_KEEP=1 keeps it for debugging)
# Needs docker (an engine), kind, kubectl, and internet for the charts and manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
HELM="${HELM:-$PWD/.tools/bin/helm}"
export KIND_CLUSTER="${KIND_CLUSTER:-dreamsim-e2e}"
KIND_HTTP_PORT="${KIND_HTTP_PORT:-8088}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.17.2}"
INGRESS_NGINX_VERSION="${INGRESS_NGINX_VERSION:-controller-v1.12.2}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.21.0}"
export KIND_ROUTE_URL="http://127.0.0.1:${KIND_HTTP_PORT}"
CTX="kind-${KIND_CLUSTER}"

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind_test: $tool is not installed" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "kind_test: no Docker engine (docker info fails)" >&2; exit 2; }
[[ -x "$HELM" ]] || scripts/install_tools.sh helm

cleanup() {
    if [[ "${KIND_KEEP:-0}" == "1" ]]; then
        echo "kind_test: keeping cluster $KIND_CLUSTER (kind delete cluster --name $KIND_CLUSTER)"
    else
        kind delete cluster --name "$KIND_CLUSTER" || true
    fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "kind cluster $KIND_CLUSTER ($KIND_NODE_IMAGE), Ingress on 127.0.0.1:$KIND_HTTP_PORT"
# Ref: kind.sigs.k8s.io/docs/user/ingress: an ingress-ready node with ports 80 mapped.
kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --wait 120s --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    kubeadmConfigPatches:
      - |
        kind: InitConfiguration
        nodeRegistration:
          kubeletExtraArgs:
            node-labels: "ingress-ready=true"
    extraPortMappings:
      - containerPort: 80
        hostPort: ${KIND_HTTP_PORT}
        listenAddress: "127.0.0.1"
        protocol: TCP
KIND

step "cert-manager $CERT_MANAGER_VERSION"
kubectl --context "$CTX" apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kubectl --context "$CTX" -n cert-manager wait --for=condition=Available deployment --all --timeout=300s

step "ingress-nginx $INGRESS_NGINX_VERSION"
kubectl --context "$CTX" apply -f "https://raw.githubusercontent.com/kubernetes/ingress-nginx/${INGRESS_NGINX_VERSION}/deploy/static/provider/kind/deploy.yaml"
kubectl --context "$CTX" -n ingress-nginx wait --for=condition=Ready pod \
    --selector=app.kubernetes.io/component=controller --timeout=300s

step "KServe $KSERVE_VERSION in Standard mode"
# The charts are kserve-crd (the CRDs) and kserve-resources (the controller), published side by
# side since v0.11; the same lines as docs/deploy.md (tests/deploy/test_kserve_defects.py keeps
# them equal). disableIstioVirtualHost: there is no Istio, and KServe would otherwise emit a
# warning event on every reconcile.
"$HELM" --kube-context "$CTX" install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd --version "$KSERVE_VERSION" \
    --namespace kserve --create-namespace --wait
"$HELM" --kube-context "$CTX" install kserve oci://ghcr.io/kserve/charts/kserve-resources --version "$KSERVE_VERSION" \
    --namespace kserve --wait --timeout 10m \
    --set kserve.controller.deploymentMode=Standard \
    --set kserve.controller.gateway.ingressGateway.className=nginx \
    --set kserve.controller.gateway.ingressGateway.enableGatewayApi=false \
    --set kserve.controller.gateway.disableIstioVirtualHost=true

step "build and load images"
docker build -f Dockerfile.predictor -t image-similarity-predictor:kind .
docker build -f Dockerfile.transformer -t image-similarity-transformer:kind .
kind load docker-image --name "$KIND_CLUSTER" image-similarity-predictor:kind image-similarity-transformer:kind

step "cluster tests"
# The documented wait after an install or upgrade (both rollouts, then TransformerReady,
# then Ready), for the cluster tests to use.
export WAIT_READY="$PWD/scripts/wait_ready.sh"
"$PY" -m pytest -m cluster tests/deploy/test_cluster.py -v -rs -p no:cacheprovider
