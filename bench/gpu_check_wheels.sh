#!/usr/bin/env bash
# Wheels for a lent GPU machine (its own Python and torch, no network): everything the
# service needs that such a machine lacked (the 2026-11-25 closing note in `issues stops`
# lists 39 packages; the transformer's native decoders (issue 13) came later and add
# numba/llvmlite, imagecodecs, simplejpeg, pybase64), for its Python (3.12 there), into
# bench/wheels/ (git-ignored; the device tool carries at most 64 MiB: carry what the
# machine lacks, `python3 -m bench.gpu_check --missing` there names it). Needs PyPI.
#   bench/gpu_check_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
PIP=${PIP:-.venv/bin/pip}
PKGS=(aiohttp-retry==2.9.1 annotated-types==0.8.0 cffi==2.1.1 cloudevents==1.13.0
  cryptography==50.0.2 deprecation==2.1.0 dreamsim==0.2.1 durationpy==0.11 fastapi==0.165.0
  ftfy==6.3.1 grpc-interceptor==0.15.4 grpcio-tools==1.81.1 httpcore2==2.16.2
  httpx2==2.16.2 kserve==0.21.0 kubernetes==37.0.1 oauthlib==4.0.1 open-clip-torch==3.3.0
  opentelemetry-api==1.45.2 orjson==3.13.0 pyasn1==0.6.5 pycparser==3.12 pydantic==2.14.4
  pydantic-core==2.50.5 pydantic-settings==2.16.3 pyjwt==2.15.1 python-dotenv==1.2.4
  python-multipart==0.0.34 pytz==2026.6 requests-oauthlib==2.0.0 starlette==1.10.0
  timing-asgi==0.3.2 truststore==0.10.5 typing-inspection==0.4.5 tzdata==2026.6
  uvicorn==0.54.0 watchfiles==1.3.0 wcwidth==0.9.4 websocket-client==1.9.2
  imagecodecs==2026.3.6 simplejpeg==1.9.0 numba==0.68.1 llvmlite==0.50.0 pybase64==1.5.1
  pytest-timeout==2.4.0 scikit-image==0.26.0 lazy-loader==0.6 imageio==2.38.2
  tifffile==2026.3.3 networkx==3.6.1)
mkdir -p bench/wheels
"$PIP" download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d bench/wheels "${PKGS[@]}"
du -sh bench/wheels
