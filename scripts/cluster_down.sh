#!/usr/bin/env bash
# `make cluster-down`: stop and remove everything the cluster lab started (cluster/lab.sh down).
# Leaves dockerd, the built images and the build caches under /var/cache/image-similarity-lab.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster/lab.sh down
