#!/usr/bin/env bash
# `make image-test`: build both images and run them as the chart does (tests/deploy/test_images.py).
#   1. a Docker engine (installs docker.io + docker-compose and starts dockerd if none answers)
#      and the base image python:3.11.13-slim-bookworm (a local debootstrap stand-in where no
#      registry can serve it): scripts/docker_engine.sh base
#   2. pytest -m image: builds Dockerfile.transformer and Dockerfile.predictor, runs the
#      containers confined like the CPU profile's pods, checks /health, distances against
#      upstream dreamsim, HEALTHCHECKs, drain on docker stop, docker-compose (CPU override);
#      prints image sizes, build times and the predictor's cold start.
# Leaves the images (and the classic builder's cache) in the engine, so the next run reuses the
# torch layer; `make image-clean` removes them. Needs root (apt-get, dockerd) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
t0=$SECONDS
scripts/docker_engine.sh base
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$PY" -m pytest tests/deploy/test_images.py -m image -s -p no:cacheprovider "$@" || status=$?
echo "image-test: total $((SECONDS - t0)) s (engine + base image + builds + tests), exit $status"
exit "$status"
