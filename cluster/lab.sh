#!/usr/bin/env bash
# The cluster lab: a single-node Kubernetes built from upstream Go modules, run as host
# processes on this machine, with a containerd of its own for the pods (docs/deploy.md,
# "Tested on"; issue 17).
#
#   cluster/lab.sh up       build what is missing, start etcd, apiserver, controller-manager,
#                           scheduler, containerd #2, kubelet, kube-proxy, CoreDNS, KServe
#   cluster/lab.sh down     stop and remove everything `up` started (pods, processes, mounts,
#                           iptables rules, cgroups, the dummy interface, sysctls it changed)
#   cluster/lab.sh status   what runs; the kubeconfig path
#   LAB_TIER=A cluster/lab.sh up   control plane + KServe's manager as a host process only
#
# Why host processes: this machine has cgroup v1 only, no privileged containers and no
# negative oom_score_adj (CLUSTER.md §1), so kind's node containers cannot run; the kubelet
# can, with containerd's restrict_oom_score_adj. Everything lives under $LAB_ROOT (state),
# $LAB_RUN (sockets, pids, logs) and $LAB_ETC (certs, configs); binaries and build caches
# under $CLUSTERLAB_CACHE (cluster/build.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/versions.env"

CACHE=${CLUSTERLAB_CACHE:-/var/cache/image-similarity-lab}
BIN=$CACHE/bin
LAB_ROOT=${LAB_ROOT:-/var/lib/clusterlab}
LAB_RUN=${LAB_RUN:-/run/clusterlab}
LAB_ETC=${LAB_ETC:-/etc/clusterlab}
PKI=$LAB_ETC/pki
LOGS=$LAB_RUN/logs
PIDS=$LAB_RUN/pids
NODE=${LAB_NODE:-clusterlab}
NODE_IP=${LAB_NODE_IP:-10.245.255.1}
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
APISERVER=https://$NODE_IP:6443
export KUBECONFIG=$LAB_ETC/admin.kubeconfig
CTR_SOCK=$LAB_RUN/containerd/containerd.sock
CGROUP_ROOT=clusterlab
PAUSE_IMAGE=localhost/clusterlab/pause:1
COREDNS_IMAGE=localhost/clusterlab/coredns:$COREDNS_VERSION
KSERVE_IMAGE=kserve/kserve-controller:$KSERVE_VERSION
KSERVE_DIR=""  # set by kserve_dir
export PATH=$BIN:$PATH

t_start=$SECONDS
log() { printf '[lab %4ds] %s\n' "$((SECONDS - t_start))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { "$BIN/kubectl" "$@"; }
ctr_() { ctr -a "$CTR_SOCK" -n k8s.io "$@"; }

# ---------------------------------------------------------------- processes
# start NAME CMD...: a session of its own, log in $LOGS/NAME.log, pid in $PIDS/NAME.pid.
start() {
  local name=$1; shift
  if [[ -f $PIDS/$name.pid ]] && kill -0 "$(cat "$PIDS/$name.pid")" 2>/dev/null; then
    log "$name already running (pid $(cat "$PIDS/$name.pid"))"; return 0
  fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! > "$PIDS/$name.pid"
  log "$name started (pid $!, log $LOGS/$name.log)"
}

# wait_for WHAT SECONDS CMD...: poll CMD every second.
wait_for() {
  local what=$1 secs=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t0 < secs)) || die "$what not ready after ${secs}s"
    sleep 1
  done
  log "$what ready ($((SECONDS - t0))s)"
}

stop_pid() {
  local name=$1 f=$PIDS/$1.pid
  [[ -f $f ]] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    log "$name stopped (pid $pid)"
  fi
  rm -f "$f"
}

# ---------------------------------------------------------------- host setup
sysctl_set() {  # records the old value once, restored by `down`
  local key=$1 val=$2 f=$LAB_RUN/sysctl.saved
  grep -q "^$key=" "$f" 2>/dev/null || echo "$key=$(sysctl -n "$key")" >> "$f"
  sysctl -qw "$key=$val"
}

host_setup() {
  mkdir -p "$LAB_ROOT" "$LAB_RUN" "$LOGS" "$PIDS" "$LAB_ETC" "$PKI" "$LAB_ETC/cni" \
    "$LAB_ROOT/pv/weights"
  for b in iptables ipset conntrack socat containerd runc ctr openssl; do
    command -v "$b" >/dev/null || die "$b missing: apt-get install containerd runc containernetworking-plugins iptables ipset conntrack socat openssl"
  done
  [[ -x /usr/lib/cni/ptp ]] || die "CNI plugins missing: apt-get install containernetworking-plugins"
  # The node's address, on the loopback interface (this kernel has no dummy driver and loads
  # no modules): every address of the cluster is local, no pod traffic needs the uplink.
  # hostPath volumes ignore the pod's fsGroup: the weights PV belongs to the images' uid 1000
  # (kserve), or neither the test's loader pod nor the chart's init container can write it.
  chown 1000:1000 "$LAB_ROOT/pv/weights"
  ip addr show dev lo | grep -q "$NODE_IP/" || ip addr add "$NODE_IP/32" dev lo label lo:clusterlab
  sysctl_set net.ipv4.ip_forward 1
  # The kubelet sets these as kind's nodes have them; `down` restores the machine's values.
  sysctl_set vm.overcommit_memory 1
  sysctl_set kernel.panic 10
  sysctl_set kernel.panic_on_oops 1
  # Docker left FORWARD at DROP: accept the pod network (kube-router's policy chains, when
  # running, sit above these rules).
  for dir in -s -d; do
    iptables -C FORWARD "$dir" "$POD_CIDR" -m comment --comment clusterlab -j ACCEPT 2>/dev/null \
      || iptables -I FORWARD 1 "$dir" "$POD_CIDR" -m comment --comment clusterlab -j ACCEPT
  done
  # cgroup v1: the kubelet's cgroup root in every hierarchy (cpuset needs cpus/mems first).
  for h in /sys/fs/cgroup/*/; do
    [[ $h == */unified/ ]] && continue
    mkdir -p "$h$CGROUP_ROOT"
  done
  cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems"
}

# ---------------------------------------------------------------- certificates
# cert NAME CN O [SANS]: key + cert signed by the lab CA.
cert() {
  local name=$1 cn=$2 o=$3 sans=${4:-}
  [[ -f $PKI/$name.crt ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  local subj="/CN=$cn"; [[ -n $o ]] && subj="/O=$o/CN=$cn"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=clientAuth,serverAuth"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() {  # kubeconfig NAME CERT
  local f=$LAB_ETC/$1.kubeconfig
  [[ -f $f ]] && return 0
  cat > "$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: clusterlab
  cluster: {server: "$APISERVER", certificate-authority: "$PKI/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: clusterlab
  context: {cluster: clusterlab, user: $1}
current-context: clusterlab
EOF
}

pki() {
  if [[ ! -f $PKI/ca.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
      -days 30 -subj "/CN=clusterlab-ca" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:10.96.0.1,IP:$NODE_IP,IP:127.0.0.1"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kubelet "system:node:$NODE" system:nodes
  cert kubelet-serving "$NODE" "" "DNS:$NODE,IP:$NODE_IP"
  cert kube-proxy system:kube-proxy ""
  [[ -f $PKI/sa.key ]] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null;
                            openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kubelet kubelet
  kubeconfig kube-proxy kube-proxy
}

# ---------------------------------------------------------------- control plane
etcd_() {
  start etcd "$BIN/etcd" --name "$NODE" --data-dir "$LAB_ROOT/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
    --quota-backend-bytes 2147483648
  wait_for etcd 60 curl -fsS http://127.0.0.1:2381/health
}

control_plane() {
  etcd_
  apiserver_
  kcm_scheduler
}

apiserver_() {
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --advertise-address="$NODE_IP" --bind-address="$NODE_IP" \
    --secure-port=6443 --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SVC_CIDR" --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction --allow-privileged=false \
    --enable-aggregator-routing=true --profiling=false --v=1
  wait_for kube-apiserver 300 curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" \
    --key "$PKI/admin.key" "$APISERVER/readyz"
}

kcm_scheduler() {
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$LAB_ETC/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$LAB_ETC/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$LAB_ETC/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --allocate-node-cidrs=true \
    --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 --service-cluster-ip-range="$SVC_CIDR" \
    --use-service-account-credentials=true --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" --v=1
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$LAB_ETC/scheduler.kubeconfig" \
    --authentication-kubeconfig="$LAB_ETC/scheduler.kubeconfig" \
    --authorization-kubeconfig="$LAB_ETC/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --v=1
}

# ---------------------------------------------------------------- node
containerd2() {
  mkdir -p "$LAB_ROOT/containerd" "$LAB_RUN/containerd"
  cat > "$LAB_ETC/containerd.toml" <<EOF
# containerd #2: the pods' runtime, apart from dockerd's own containerd.
version = 2
root = "$LAB_ROOT/containerd"
state = "$LAB_RUN/containerd/state"
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$LAB_RUN/containerd/ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$LAB_ROOT/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # this machine denies negative oom_score_adj (CLUSTER.md §1): clamp the CRI's -998/-997
  restrict_oom_score_adj = true
  tolerate_missing_hugepages_controller = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$LAB_ETC/cni"
EOF
  cat > "$LAB_ETC/cni/10-clusterlab.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "clusterlab",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$LAB_ROOT/cni/ipam",
              "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  start containerd containerd --config "$LAB_ETC/containerd.toml"
  wait_for containerd 60 ctr -a "$CTR_SOCK" version
}

kubelet_() {
  mkdir -p "$LAB_ROOT/kubelet" "$LAB_ROOT/pod-logs"
  cat > "$LAB_ETC/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$CTR_SOCK
failSwapOn: false
# negative values are denied here (CLUSTER.md §1)
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%", nodefs.inodesFree: "1%"}
podLogsDir: $LAB_ROOT/pod-logs
podCIDR: $NODE_POD_CIDR
maxPods: 60
serializeImagePulls: false
EOF
  start kubelet "$BIN/kubelet" --config="$LAB_ETC/kubelet.yaml" \
    --kubeconfig="$LAB_ETC/kubelet.kubeconfig" --hostname-override="$NODE" --node-ip="$NODE_IP" \
    --root-dir="$LAB_ROOT/kubelet" --cert-dir="$LAB_ROOT/kubelet/pki" --v=1
  wait_for "node $NODE registered" 120 kc get node "$NODE"
  cat > "$LAB_ETC/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $LAB_ETC/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
nodePortAddresses: ["$NODE_IP/32"]
EOF
  start kube-proxy "$BIN/kube-proxy" --config="$LAB_ETC/kube-proxy.yaml" --v=1
  wait_for "node $NODE Ready" 180 kc wait --for=condition=Ready "node/$NODE" --timeout=2s
}

# ---------------------------------------------------------------- images
docker_image() {  # docker_image TAG BINARY ENTRYPOINT...: FROM scratch + one static binary
  local tag=$1 binary=$2; shift 2
  docker image inspect "$tag" >/dev/null 2>&1 && \
    [[ "$(docker image inspect -f '{{index .Config.Labels "clusterlab.binary.sha"}}' "$tag")" == "$(sha256sum "$binary" | cut -c1-16)" ]] && return 0
  local ctx; ctx=$(mktemp -d)
  cp "$binary" "$ctx/bin"
  local ep; ep=$(printf '"%s",' "$@"); ep=${ep%,}
  printf 'FROM scratch\nCOPY bin %s\nUSER 65532:65532\nLABEL clusterlab.binary.sha=%s\nENTRYPOINT [%s]\n' \
    "$1" "$(sha256sum "$binary" | cut -c1-16)" "$ep" > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  log "image $tag built"
}

load_image() {  # docker image -> containerd #2 (stand-in for `kind load`), skipped when loaded
  local tag=$1 id mark
  id=$(docker image inspect -f '{{.Id}}' "$tag") || die "image $tag missing in docker"
  mark=$LAB_ROOT/containerd/loaded/$(echo "$tag" | tr '/:' '__')
  [[ -f $mark && "$(cat "$mark")" == "$id" ]] && return 0
  local t0=$SECONDS
  # The previous build of this tag first (and its :lab2 alias): unreferenced, its layers
  # are garbage-collected, so the store holds one version of each image, not one per build
  # (a 5.5 GB predictor image per rebuild filled the disk once).
  ctr_ images rm "docker.io/library/$tag" "docker.io/library/${tag%%:*}:lab2" >/dev/null 2>&1 || true
  docker save "$tag" | ctr_ images import - >/dev/null
  mkdir -p "$(dirname "$mark")"; echo "$id" > "$mark"
  log "image $tag loaded into containerd #2 ($((SECONDS - t0))s)"
}

# Our two images, built as `make image-test` builds them (tests/deploy/docker_cli.py: the
# classic builder, from the repo root) and tagged as the chart deploys them.
APP_VERSION=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$repo/charts/image-similarity-service/Chart.yaml")
project_images() {
  "$repo/scripts/docker_engine.sh" base
  for c in transformer predictor; do
    local t0=$SECONDS
    (cd "$repo" && DOCKER_BUILDKIT=0 nice -n 10 docker build -q -f "Dockerfile.$c" \
      -t "image-similarity-$c:$APP_VERSION" . >/dev/null) || die "docker build Dockerfile.$c failed"
    log "image image-similarity-$c:$APP_VERSION built ($((SECONDS - t0))s)"
    echo "$(date -u +%FT%TZ) image-$c $((SECONDS - t0))s load=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$CACHE/logs/build-times.log"
  done
}

load_project_images() {
  for c in transformer predictor; do load_image "image-similarity-$c:$APP_VERSION"; done
}

system_images() {
  "$repo/scripts/docker_engine.sh"  # the images are built with Docker: start it when it is not
  docker_image "$PAUSE_IMAGE" "$BIN/pause" /pause
  docker_image "$COREDNS_IMAGE" "$BIN/coredns" /coredns
  docker_image "$KSERVE_IMAGE" "$BIN/kserve-manager" /manager
  for i in "$PAUSE_IMAGE" "$COREDNS_IMAGE" "$KSERVE_IMAGE"; do load_image "$i"; done
}

alt_tags() {  # <image>:lab2 beside :$APP_VERSION in containerd #2 (the upgrade test's tag)
  for c in transformer predictor; do
    ctr_ images tag --force "docker.io/library/image-similarity-$c:$APP_VERSION" \
      "docker.io/library/image-similarity-$c:lab2" >/dev/null
  done
  log "images tagged :lab2 in containerd #2"
}

# ---------------------------------------------------------------- add-ons
addons() {
  # CoreDNS: cluster.local only, no `forward`: no query leaves the machine.
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:coredns}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:5353 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            ttl 30
        }
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations: [{operator: Exists}]
      securityContext: {runAsNonRoot: true, runAsUser: 65532}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports: [{containerPort: 5353, name: dns, protocol: UDP}, {containerPort: 5353, name: dns-tcp, protocol: TCP}]
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 5}
        livenessProbe: {httpGet: {path: /health, port: 8080}, initialDelaySeconds: 10}
        resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 170Mi}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}, {name: dns-tcp, port: 53, targetPort: 5353, protocol: TCP}]
---
# The weights volume: a hostPath PV with no class; a PVC without a class binds to it.
apiVersion: v1
kind: PersistentVolume
metadata: {name: clusterlab-weights}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $LAB_ROOT/pv/weights, type: DirectoryOrCreate}
EOF
  # One "GPU": an extended resource in the node's capacity (the predictor is told DEVICE=cpu)
  # and the GPU taint, PreferNoSchedule so that the pods without the toleration still fit
  # on the only node.
  kc patch node "$NODE" --subresource=status --type=json \
    -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]' >/dev/null
  kc taint node "$NODE" nvidia.com/gpu=present:PreferNoSchedule --overwrite >/dev/null
  kc label node "$NODE" nvidia.com/gpu.present=true --overwrite >/dev/null
  wait_for CoreDNS 180 kc -n kube-system wait --for=condition=Available deploy/coredns --timeout=2s
}

kserve_dir() {
  KSERVE_DIR=$(cd "$here/go/kserve" && GOMODCACHE=$CACHE/gomod GOFLAGS=-mod=mod \
    go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  [[ -d $KSERVE_DIR/charts/kserve-crd ]] || die "no charts in $KSERVE_DIR"
}

kserve() {
  kserve_dir
  local helm=$repo/.tools/bin/helm
  [[ -x $helm ]] || helm=$(command -v helm) || die "helm missing: make tools"
  kc apply -f "$here/manifests/cert-manager-standin-crds.yaml" >/dev/null
  kc create namespace kserve --dry-run=client -o yaml | kc apply -f - >/dev/null
  # Webhook serving certificate for kserve-webhook-server-service.kserve.svc, signed by the
  # lab CA (cert-manager's job in production: nothing acts on the stand-in CRDs).
  if ! kc -n kserve get secret kserve-webhook-server-cert >/dev/null 2>&1; then
    cert kserve-webhook kserve-webhook-server-service.kserve.svc "" \
      "DNS:kserve-webhook-server-service.kserve.svc,DNS:kserve-webhook-server-service.kserve.svc.cluster.local,DNS:kserve-webhook-server-service"
    kc -n kserve create secret generic kserve-webhook-server-cert \
      --from-file=tls.crt="$PKI/kserve-webhook.crt" --from-file=tls.key="$PKI/kserve-webhook.key" \
      --from-file=ca.crt="$PKI/ca.crt" >/dev/null
  fi
  "$helm" upgrade --install kserve-crd "$KSERVE_DIR/charts/kserve-crd" --kubeconfig "$KUBECONFIG" \
    --wait --timeout 5m >/dev/null
  "$helm" upgrade --install kserve "$KSERVE_DIR/charts/kserve-resources" --kubeconfig "$KUBECONFIG" \
    --namespace kserve -f "$here/values/kserve.yaml" \
    --set "kserve.version=$KSERVE_VERSION" --set "kserve.controller.tag=$KSERVE_VERSION" \
    --timeout 5m >/dev/null
  local ca; ca=$(base64 -w0 < "$PKI/ca.crt")
  for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do
    for w in $(kc get "$kind" -o name | grep -i -E 'kserve|inferenceservice|servingruntime|trainedmodel|inferencegraph|llm'); do
      local n; n=$(kc get "$w" -o jsonpath='{range .webhooks[*]}{.name}{"\n"}{end}' | wc -l)
      local patch="["; for ((i = 0; i < n; i++)); do
        patch+="{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$ca\"},"; done
      kc patch "$w" --type=json -p "${patch%,}]" >/dev/null
    done
  done
  [[ ${LAB_TIER:-B} == A ]] && { kserve_host; return 0; }
  # kube-rbac-proxy (metrics only) is not on the Go module proxy: drop that sidecar; the
  # manager and its webhooks are upstream's, unchanged.
  local idx; idx=$(kc -n kserve get deploy kserve-controller-manager -o jsonpath='{range .spec.template.spec.containers[*]}{.name}{"\n"}{end}' | grep -n kube-rbac-proxy | cut -d: -f1 || true)
  if [[ -n $idx ]]; then
    kc -n kserve patch deploy kserve-controller-manager --type=json \
      -p "[{\"op\":\"remove\",\"path\":\"/spec/template/spec/containers/$((idx - 1))\"}]" >/dev/null
  fi
  wait_for "KServe controller" 300 kc -n kserve wait --for=condition=Available deploy/kserve-controller-manager --timeout=2s
  wait_for "KServe webhook endpoint" 120 bash -c "kc() { '$BIN/kubectl' \"\$@\"; }; kc -n kserve get endpointslices -l kubernetes.io/service-name=kserve-webhook-server-service -o jsonpath='{.items[*].endpoints[*].addresses[0]}' | grep -q ."
}

# Tier A (no kubelet): KServe's manager as a host process with the same flags and env as
# its Deployment; the webhook Service's endpoint is this node's address (the API server
# routes webhooks to endpoints: --enable-aggregator-routing).
kserve_host() {
  local certs=$LAB_RUN/kserve-tmp/k8s-webhook-server/serving-certs
  mkdir -p "$certs"
  cp "$PKI/kserve-webhook.crt" "$certs/tls.crt"; cp "$PKI/kserve-webhook.key" "$certs/tls.key"
  kc -n kserve scale deploy kserve-controller-manager --replicas=0 >/dev/null
  # the selector would let the endpoints controller empty our Endpoints
  kc -n kserve patch service kserve-webhook-server-service --type=json \
    -p '[{"op":"remove","path":"/spec/selector"}]' >/dev/null 2>&1 || true
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Endpoints
metadata: {name: kserve-webhook-server-service, namespace: kserve}
subsets: [{addresses: [{ip: "$NODE_IP"}], ports: [{port: 9443}]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kserve-webhook-server-service-host
  namespace: kserve
  labels: {kubernetes.io/service-name: kserve-webhook-server-service, endpointslice.kubernetes.io/managed-by: clusterlab}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{port: 9443, protocol: TCP}]
EOF
  POD_NAMESPACE=kserve SECRET_NAME=kserve-webhook-server-cert TMPDIR=$LAB_RUN/kserve-tmp \
    KUBECONFIG=$KUBECONFIG start kserve-manager "$BIN/kserve-manager" \
    --metrics-addr=127.0.0.1:18080 --health-probe-addr=127.0.0.1:18081
  wait_for "KServe manager (host process)" 180 curl -fsS http://127.0.0.1:18081/readyz
}

# ---------------------------------------------------------------- NetworkPolicy
# kube-router as a NetworkPolicy agent only (no routing, no service proxy, no CNI of its
# own: the pods stay on CNI ptp): its iptables and ipset rules enforce the cluster's
# NetworkPolicies on the pods' traffic. kindnet's agent cannot run on this kernel (no
# nftables queue); kube-router's iptables backend can. LAB_NETPOL=0 leaves it out.
netpol() {
  [[ ${LAB_NETPOL:-1} == 1 ]] || { log "NetworkPolicy agent left out (LAB_NETPOL=0)"; return 0; }
  [[ -x $BIN/kube-router ]] || "$here/build.sh" kube_router
  start kube-router "$BIN/kube-router" --kubeconfig="$KUBECONFIG" --hostname-override="$NODE" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --enable-pod-egress=false --service-cluster-ip-range="$SVC_CIDR" --health-port=20244 --v=1
  wait_for "kube-router (NetworkPolicy agent)" 120 curl -fsS http://127.0.0.1:20244/healthz
}

# ---------------------------------------------------------------- down
down() {
  log "tearing the cluster lab down"
  # Pods first, while the kubelet runs? No: stop the kubelet so nothing restarts, then kill
  # every task of containerd #2 and remove its containers and sandboxes' network namespaces.
  stop_pid kube-router; stop_pid kube-proxy; stop_pid kubelet
  if [[ -S $CTR_SOCK ]]; then
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$t" 2>/dev/null || true; done
    sleep 1
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  # containerd-shim processes of containerd #2 (their command line names our state dir).
  for p in $(pgrep -f "containerd-shim.*-address $CTR_SOCK" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
  stop_pid kserve-manager
  stop_pid kube-scheduler; stop_pid kube-controller-manager; stop_pid kube-apiserver; stop_pid etcd
  # Mounts under the lab's dirs (pod volumes, overlay rootfs, netns, shm), deepest first.
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^($LAB_ROOT|$LAB_RUN)/" | sort -r || true); do
    umount -l "$m" 2>/dev/null || true
  done
  for ns in /run/netns/cni-*; do
    [[ -e $ns ]] || continue
    ip netns delete "$(basename "$ns")" 2>/dev/null || true
  done
  # iptables: kube-proxy's chains, then ours.
  [[ -x $BIN/kube-proxy ]] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # kube-router's policy chains and ipsets (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*).
  [[ -x $BIN/kube-router ]] && "$BIN/kube-router" --cleanup-config >/dev/null 2>&1 || true
  for t in filter nat mangle; do
    { iptables -t "$t" -S 2>/dev/null | grep -- '--comment clusterlab' || true; } | sed 's/^-A /-D /' | while read -r r; do
      eval "iptables -t $t $r" 2>/dev/null || true
    done
  done
  # The kubelet's own chains (kube-proxy --cleanup leaves them): KUBE-FIREWALL, jumped to
  # from INPUT and OUTPUT, and the canary/hint chains, in IPv4 and IPv6.
  for ipt in iptables ip6tables; do
    for c in INPUT OUTPUT; do
      while "$ipt" -t filter -D "$c" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
    for t in filter nat mangle; do
      for ch in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$t" -F "$ch" 2>/dev/null && "$ipt" -t "$t" -X "$ch" 2>/dev/null || true
      done
    done
  done
  # kubelet-made cgroups, deepest first.
  for h in /sys/fs/cgroup/*/; do
    [[ -d $h$CGROUP_ROOT ]] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  { ip link show 2>/dev/null | grep -o 'veth[0-9a-f]*@' || true; } | tr -d @ | while read -r v; do
    ip -d link show "$v" 2>/dev/null | grep -q 'link-netns cni-' && ip link del "$v" 2>/dev/null || true
  done
  if [[ -f $LAB_RUN/sysctl.saved ]]; then
    while IFS== read -r k v; do sysctl -qw "$k=$v" || true; done < "$LAB_RUN/sysctl.saved"
    rm -f "$LAB_RUN/sysctl.saved"
  fi
  if [[ ${CLUSTERLAB_WIPE:-1} == 1 ]]; then
    rm -rf "$LAB_RUN" "$LAB_ETC"
    rm -rf "${LAB_ROOT:?}/etcd" "$LAB_ROOT/kubelet" "$LAB_ROOT/pod-logs" "$LAB_ROOT/cni"
    # containerd #2's content store is kept unless asked: reloading the images takes minutes.
    [[ ${CLUSTERLAB_WIPE_IMAGES:-0} == 1 ]] && rm -rf "$LAB_ROOT/containerd"
  fi
  log "down"
}

status() {
  for f in "$PIDS"/*.pid; do
    [[ -f $f ]] || continue
    local n; n=$(basename "$f" .pid)
    if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: dead"; fi
  done
  echo "KUBECONFIG=$KUBECONFIG"
}

up() {
  if [[ ${LAB_TIER:-B} == A ]]; then  # control plane + KServe's manager, no kubelet
    K8S_COMPONENTS="kube-apiserver kubectl" "$here/build.sh" pause etcd k8s kserve
    host_setup; pki; etcd_; apiserver_; kserve
    log "cluster (Tier A) up in $((SECONDS - t_start))s; KUBECONFIG=$KUBECONFIG"
    return 0
  fi
  "$here/build.sh"
  host_setup
  pki
  control_plane
  containerd2
  system_images
  kubelet_
  addons
  netpol
  kserve
  project_images
  load_project_images
  log "cluster up in $((SECONDS - t_start))s; KUBECONFIG=$KUBECONFIG"
}

cmd=${1:-status}; shift || true
case $cmd in
  up) up ;;
  down) down ;;
  status) status ;;
  kubeconfig) echo "$KUBECONFIG" ;;
  *) "$cmd" "$@" ;;  # one step by hand, e.g. `cluster/lab.sh kserve`
esac
