#!/usr/bin/env bash
# `make cluster-test`: the chart on the cluster lab with the real KServe controller (issue 17).
#   1. scripts/cluster_up.sh: builds what is missing (cluster/build.sh: time per component),
#      starts the cluster, installs KServe (Standard mode, self-signed webhook certs), loads
#      both images;
#   2. pytest tests/deploy/test_cluster.py -m cluster against context `clusterlab`: copies the
#      test checkpoint into a PVC, installs the chart with cluster/values/chart-lab.yaml, and
#      runs the install, traffic, fault and day-two tests;
#   3. tears everything down, also on Ctrl-C or failure, unless CLUSTER_KEEP=1.
# LAB_TIER=A: control plane + KServe's manager only (no kubelet): the object-level tests run,
# the pod-level ones skip saying so.
# Needs root (processes, iptables, cgroups, mounts) and the package registries on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
t0=$SECONDS
teardown() {
  local rc=$?
  if [[ ${CLUSTER_KEEP:-0} == 1 ]]; then
    echo "cluster-test: CLUSTER_KEEP=1, the cluster stays up: KUBECONFIG=$(cluster/lab.sh kubeconfig); make cluster-down ends it"
  else
    cluster/lab.sh down || true
  fi
  echo "cluster-test: total $((SECONDS - t0)) s, exit $rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM
scripts/cluster_up.sh
t_up=$((SECONDS - t0))
echo "cluster-test: cluster up in ${t_up} s"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$PWD/client"
export KUBECONFIG CLUSTER_TEST_CONTEXT=clusterlab CLUSTER_TEST_ALT_TAG=lab2
# the lab runs kube-router as its NetworkPolicy agent unless LAB_NETPOL=0
export CLUSTER_TEST_NETPOL=$([[ ${LAB_NETPOL:-1} == 1 && ${LAB_TIER:-B} != A ]] && echo 1 || echo 0)
KUBECONFIG=$(cluster/lab.sh kubeconfig)
t1=$SECONDS
status=0
"$PY" -m pytest tests/deploy/test_cluster.py -m cluster -s -p no:cacheprovider "$@" || status=$?
echo "cluster-test: tests took $((SECONDS - t1)) s (exit $status)"
exit "$status"
