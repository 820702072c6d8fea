#!/usr/bin/env bash
# Usage: scripts/check_disk.sh DIR GIB
# Warns (does not fail) when DIR's filesystem has less than GIB GiB free: the runtime install
# (torch's CUDA build with its nvidia-* wheels) needs about 8 GiB in the venv and more while
# pip unpacks, and a full disk otherwise shows up only as pip's "[Errno 28] No space left".
set -euo pipefail
dir=${1:-.}; need=${2:-12}
free_kib=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
free_gib=$((free_kib / 1024 / 1024))
if [ "$free_gib" -lt "$need" ]; then
  echo "check_disk: only ${free_gib} GiB free under $(cd "$dir" && pwd) (df -h: $(df -Ph "$dir" | awk 'NR==2 {print $4}'));" \
       "installing torch needs about ${need} GiB. Free space (old clones' .venv, /tmp/pytest-of-\$USER," \
       "docker system prune) if pip fails with 'No space left on device'." >&2
else
  echo "check_disk: ${free_gib} GiB free under $(cd "$dir" && pwd)"
fi
