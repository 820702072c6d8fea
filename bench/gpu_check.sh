#!/usr/bin/env bash
# make gpu-check: the GPU path measured in one command (bench/gpu_check.py says what it
# runs). Writes bench/results/gpu-check/{summary.md,figures.json} (GPU_CHECK_OUT).
#
# The Python: $PY if set; else this checkout's .venv when it has torch and kserve; else
# python3 (a lent GPU machine brings its own Python and torch, and no network). When that
# Python lacks the service's packages and $GPU_CHECK_WHEELS (default bench/wheels) holds
# wheels for them (bench/gpu_check_wheels.sh downloads them on a machine with PyPI), they
# go into .gpu-check-venv, a venv over the system's site-packages (its torch is reused),
# installed with --no-index --no-deps; the venv is reused by later runs. Without them the
# steps that need them fail and say so, and the others still run.
#
#   make gpu-check                                    # on a GPU machine
#   DEVICE=cpu make gpu-check GPU_CHECK_ARGS='--tiny --caps-scale 10'   # CPU mode
#   bench/gpu_check.sh --dry-run                      # the steps and their caps
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-bench/results/gpu-check}
WHEELS=${GPU_CHECK_WHEELS:-bench/wheels}
started=$(date +%s)
if [ "${1:-}" = --dry-run ]; then  # the plan only: no environment checks (they take a while)
  dry_py=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  PYTHONPATH=$PWD exec "$dry_py" -m bench.gpu_check --dry-run
fi

if [ -z "${PY:-}" ]; then
  if [ -x .gpu-check-venv/bin/python ]; then
    PY=.gpu-check-venv/bin/python
  elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, kserve' 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
"$PY" -c 'import torch' || { echo "gpu-check: $PY has no torch" >&2; exit 2; }
missing=$(PYTHONPATH=$PWD "$PY" -m bench.gpu_check --missing)
if [ -n "$missing" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "gpu-check: $PY lacks: $missing; installing the wheels in $WHEELS into .gpu-check-venv"
  [ -x .gpu-check-venv/bin/python ] || "$PY" -m venv --system-site-packages .gpu-check-venv
  .gpu-check-venv/bin/python -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
  PY=.gpu-check-venv/bin/python
  missing=$(PYTHONPATH=$PWD "$PY" -m bench.gpu_check --missing)
fi
[ -z "$missing" ] || echo "gpu-check: still missing: $missing (the steps needing them will fail)"
echo "gpu-check: $PY, environment ready in $(( $(date +%s) - started )) s"
# 8 minutes in all (times --caps-scale, for CPU mode on a slow machine); the driver's own
# caps keep each step inside its share, this is the safety net.
scale=1
args=("$@")
for i in "${!args[@]}"; do
  [ "${args[$i]}" = --caps-scale ] && scale=${args[$((i + 1))]:-1}
done
limit=$(python3 -c "print(int(480 * float('$scale')) - $(( $(date +%s) - started )))")
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} exec timeout --signal=INT --kill-after=10 \
  "$limit" "$PY" -m bench.gpu_check --out "$OUT" "$@"
