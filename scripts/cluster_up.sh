#!/usr/bin/env bash
# `make cluster-up`: build what is missing, start the cluster lab, build and load our two
# images (as `make image-test` builds them); prints the kubeconfig. See cluster/lab.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
cluster/lab.sh up
# a second tag of both images, for the upgrade test (containerd tags: no second import)
[[ ${LAB_TIER:-B} == A ]] || cluster/lab.sh alt_tags
echo "cluster-up: $((SECONDS - t0)) s; export KUBECONFIG=$(cluster/lab.sh kubeconfig) (context clusterlab)"
