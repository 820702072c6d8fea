#!/usr/bin/env bash
# Builds the cluster lab's Go binaries from their upstream Go modules (cluster/go/*/go.mod),
# only those missing or built from another version. Caches and outputs live outside the
# repository; each build's wall time is printed and appended to $LAB/logs/build-times.log.
#   cluster/build.sh [k8s|etcd|coredns|kserve|pause ...]   (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LAB=${CLUSTERLAB_CACHE:-/var/cache/image-similarity-lab}
BIN=$LAB/bin
export GOMODCACHE=$LAB/gomod GOCACHE=$LAB/gocache GOFLAGS=-mod=mod CGO_ENABLED=0
JOBS=${CLUSTERLAB_BUILD_JOBS:-2}
mkdir -p "$BIN" "$LAB/logs"
. "$here/versions.env"

# build NAME STAMP DIR PKG [go build args...]: skips when $BIN/NAME.stamp == STAMP.
build() {
  local name=$1 stamp=$2 dir=$3 pkg=$4; shift 4
  if [[ -x $BIN/$name && "$(cat "$BIN/$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "[build] $name: up to date ($stamp)"; return 0
  fi
  echo "[build] $name: building $pkg ($stamp) ..."
  local t0=$SECONDS
  (cd "$dir" && nice -n "${CLUSTERLAB_NICE:-10}" go build -p "$JOBS" -trimpath "$@" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  echo "$stamp" > "$BIN/$name.stamp"
  local dt=$((SECONDS - t0))
  echo "[build] $name: done in ${dt}s"
  echo "$(date -u +%FT%TZ) $name $stamp ${dt}s load=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$LAB/logs/build-times.log"
}

k8s() {
  local v=$K8S_VERSION minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1"
  ld+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  ld+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for c in ${K8S_COMPONENTS:-kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy}; do
    build "$c" "k8s.io/kubernetes@$v" "$here/go/k8s" "k8s.io/kubernetes/cmd/$c" -ldflags "$ld"
  done
}
etcd() { build etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$here/go/etcd" go.etcd.io/etcd/server/v3 -ldflags "-s -w"; }
coredns() { build coredns "github.com/coredns/coredns@$COREDNS_VERSION" "$here/go/coredns" github.com/coredns/coredns -ldflags "-s -w"; }
kserve() { build kserve-manager "github.com/kserve/kserve@$KSERVE_VERSION" "$here/go/kserve" github.com/kserve/kserve/cmd/manager -ldflags "-s -w"; }
kube_router() { build kube-router "github.com/cloudnativelabs/kube-router/v2@$KUBE_ROUTER_VERSION" "$here/go/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router -ldflags "-s -w"; }
pause() { build pause "clusterlab-pause@$(sha256sum "$here/pause/main.go" | cut -c1-12)" "$here/pause" . -ldflags "-s -w"; }

targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(pause etcd k8s kserve coredns kube_router)
for t in "${targets[@]}"; do "$t"; done
