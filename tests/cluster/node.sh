#!/usr/bin/env bash
# One real Kubernetes node on this host, next to the control plane of control-plane.sh:
# a private containerd (Debian's 1.6, CRI plugin, runc, cgroupfs), the CNI bridge
# plugin on a bridge this script creates, the kubelet, kube-proxy (iptables mode) and
# CoreDNS as the cluster DNS (on the node IP, port 53; Service names resolve in pods).
#
#   tests/cluster/node.sh up      # needs `control-plane.sh up` first and root
#   tests/cluster/node.sh down    # (control-plane.sh down calls this too)
#   tests/cluster/node.sh net-up  # only the bridge + node IP (control-plane.sh up --with-node
#                                 # runs it first so the API server can listen on the node IP)
#   tests/cluster/node.sh node-ip # prints the node IP
#
# Node name $NODE_NAME (porchlight-node), node IP $NODE_IP on bridge $BRIDGE, pod IPs from
# $POD_SUBNET. Local images from images.sh are imported into containerd's k8s.io namespace:
# localhost/porchlight/pause:1 (sandbox image), localhost/porchlight/busybox:1 and, if built,
# localhost/porchlight/debian:bookworm. Use imagePullPolicy: Never or IfNotPresent.
#
# Host changes, all undone by `down`: bridge $BRIDGE, cgroup dirs /sys/fs/cgroup/*/porchlight,
# kube-proxy's and the kubelet's iptables chains,
# the six sysctls the kubelet insists on (restored to their old values), mounts under
# $CLUSTER_DIR/node, /var/lib/cni/results/porchlight-*.
# Needs: containerd runc containernetworking-plugins iptables (apt), root with CAP_NET_ADMIN and
# writable cgroupfs.
set -euo pipefail
LOG_TAG=node
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_NAME=${NODE_NAME:-porchlight-node}
BRIDGE=${BRIDGE:-plbr0}
POD_SUBNET=${POD_SUBNET:-10.246.0.0/24}
NODE_IP=${NODE_IP:-${POD_SUBNET%.*}.1}
CGROUP_ROOT=${NODE_CGROUP_ROOT:-porchlight}
CNI_NET=porchlight
N=$CLUSTER_DIR/node
SOCK=$N/containerd/containerd.sock
WAIT=${CLUSTER_WAIT_SECONDS:-120}
IMAGES_DIR=${IMAGES_DIR:-$PORCHLIGHT_CACHE/images}
SYSCTLS=(vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1
  kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000)

ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

preflight() {
  [[ $(id -u) == 0 ]] || die "node.sh needs root"
  [[ -f $CLUSTER_DIR/admin.kubeconfig ]] || die "no control plane in $CLUSTER_DIR (run control-plane.sh up)"
  need_bins kubelet kubectl kube-proxy coredns
  local b
  for b in containerd ctr runc; do command -v $b >/dev/null || die "$b missing: apt-get install containerd runc"; done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
    die "CNI plugins missing: apt-get install containernetworking-plugins"
  [[ -e /dev/kmsg ]] || die "/dev/kmsg missing (the kubelet's OOM watcher opens it)"
  if [[ ! -f $N/net ]] && ip link show "$BRIDGE" >/dev/null 2>&1; then
    die "bridge $BRIDGE already exists (another node running? try node.sh down)"
  fi
  true
}

# Bridge with the node IP; the CNI bridge plugin attaches pods to it (gateway = node IP).
cmd_net_up() {
  [[ $(id -u) == 0 ]] || die "node.sh needs root"
  [[ -f $N/net ]] && return 0
  ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE already exists (another node running? try node.sh down)"
  mkdir -p "$N"
  touch "$N/net"
  iptables_record
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  log "bridge $BRIDGE up with node IP $NODE_IP"
}


setup_cgroups() {
  # cgroupfs driver, cgroupRoot /porchlight: pre-create it in every v1 hierarchy (as kind does);
  # cpuset needs cpus/mems copied from its parent or attaching a task fails with ENOSPC.
  local d
  for d in /sys/fs/cgroup/*/; do
    d=${d%/}
    [[ $(stat -fc %T "$d") == cgroupfs || $(stat -fc %T "$d") == cgroup2fs ]] || continue
    [[ $d == */unified ]] && continue
    mkdir -p "$d/$CGROUP_ROOT"
    if [[ -f $d/cpuset.cpus ]]; then
      cat "$d/cpuset.cpus" >"$d/$CGROUP_ROOT/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d/$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

cleanup_cgroups() {
  local d i
  for d in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    [[ -d $d ]] || continue
    for ((i = 0; i < 20; i++)); do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $d ]] || break
      sleep 0.5
    done
    [[ -d $d ]] && log "warning: could not remove $d (tasks: $(find "$d" -name tasks -exec cat {} + | head -5 | tr '\n' ' '))"
  done
  true
}

write_configs() {
  mkdir -p "$N"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,runc}
  cat >"$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
oom_score = 0

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$N/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "localhost/porchlight/pause:1"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    restrict_oom_score_adj = true
    disable_apparmor = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$N/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$N/cni/net.d"
      max_conf_num = 1
EOF
  cat >"$N/cni/net.d/10-$CNI_NET.conflist" <<EOF
{ "cniVersion": "0.4.0", "name": "$CNI_NET",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$N/cni/ipam",
                "ranges": [[{ "subnet": "$POD_SUBNET", "gateway": "$NODE_IP" }]],
                "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": false } ] }
EOF
}

kubelet_config() {
  local port=$1 hz=$2
  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $port
healthzBindAddress: 127.0.0.1
healthzPort: $hz
readOnlyPort: 0
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CLUSTER_DIR/pki/ca.crt}
authorization: {mode: Webhook}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
maxOpenFiles: $(( $(ulimit -Hn) < 16384 ? $(ulimit -Hn) : 16384 ))
oomScoreAdj: 0
serializeImagePulls: false
resolvConf: /etc/resolv.conf
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
podLogsDir: $N/pod-logs
volumePluginDir: $N/kubelet/volume-plugins
protectKernelDefaults: false
${KUBELET_EXTRA_CONFIG:-}
EOF
}

# kube-proxy (iptables mode) so that ClusterIP Services, including `kubernetes` for
# in-cluster API clients, work from pods and from the host. Settings that would make it
# write conntrack sysctls or localhost NodePort rules are off; NodePorts only on the bridge.
start_kube_proxy() {
  client_cert kube-proxy system:kube-proxy # bound to system:node-proxier by default RBAC
  local api hp mp
  api=$(sed -n 's/^ *server: //p' "$CLUSTER_DIR/admin.kubeconfig")
  write_kubeconfig "$N/kube-proxy.kubeconfig" "$api" "$CLUSTER_DIR/pki/ca.crt" \
    "$CLUSTER_DIR/pki/kube-proxy.crt" "$CLUSTER_DIR/pki/kube-proxy.key"
  hp=$(free_port); mp=$(free_port)
  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $N/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_SUBNET
nodePortAddresses: ["$POD_SUBNET"]
healthzBindAddress: 127.0.0.1:$hp
metricsBindAddress: 127.0.0.1:$mp
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
  start kube-proxy "$K8S_BIN/kube-proxy" --config="$N/kube-proxy.yaml" --v=2
  wait_for "kube-proxy /healthz" "$WAIT" kube-proxy curl -fsS "http://127.0.0.1:$hp/healthz"
}

# CoreDNS on the node IP (the kubelet's clusterDNS), answering for cluster.local and
# reverse lookups from the API (admin credentials: a throwaway test cluster). Other names
# are refused, so pods send no DNS traffic off this host.
start_dns() {
  local hp rp
  hp=$(free_port); rp=$(free_port)
  cat >"$N/Corefile" <<EOF
cluster.local in-addr.arpa ip6.arpa {
    bind $NODE_IP
    errors
    health 127.0.0.1:$hp
    ready 127.0.0.1:$rp
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CLUSTER_DIR/admin.kubeconfig
        pods insecure
        ttl 5
    }
    cache 5
}
EOF
  start coredns "$K8S_BIN/coredns" -conf "$N/Corefile" -dns.port 53
  wait_for "coredns /ready" "$WAIT" coredns curl -fsS "http://127.0.0.1:$rp/ready"
}

cmd_up() {
  preflight
  # die() exits, which skips ERR traps: tear down from an EXIT trap unless up finished.
  UP_DONE=0
  # Keep a bridge made by an earlier net-up: the API server may listen on it (control-plane.sh).
  KEEP_NET=; [[ -f $N/net ]] && KEEP_NET=--keep-net
  trap 'if ((UP_DONE == 0)); then log "up failed or interrupted: tearing down"; cmd_down $KEEP_NET; fi' EXIT
  trap 'exit 130' INT TERM
  local t0=$SECONDS
  mkdir -p "$N"
  touch "$N/up"

  # Kernel tunables the kubelet checks (and otherwise writes itself); old values restored on down.
  : >"$N/sysctl.orig"
  local kv k
  for kv in "${SYSCTLS[@]}"; do
    k=${kv%%=*}
    echo "$k=$(sysctl -n "$k")" >>"$N/sysctl.orig"
    sysctl -qw "$kv"
  done

  cmd_net_up
  setup_cgroups
  write_configs

  start containerd containerd --config "$N/containerd/config.toml"
  wait_for "containerd" 60 containerd ctr --address "$SOCK" version
  [[ -f $IMAGES_DIR/pause.tar && -f $IMAGES_DIR/busybox.tar ]] || "$HERE/images.sh" >/dev/null
  local img
  for img in "$IMAGES_DIR"/*.tar; do
    ctr_ images import "$img" >/dev/null
    log "imported $(basename "$img")"
  done

  start_dns
  client_cert "node-$NODE_NAME" "system:node:$NODE_NAME" system:nodes
  local api
  api=$(sed -n 's/^ *server: //p' "$CLUSTER_DIR/admin.kubeconfig")
  write_kubeconfig "$N/kubelet.kubeconfig" "$api" "$CLUSTER_DIR/pki/ca.crt" \
    "$CLUSTER_DIR/pki/node-$NODE_NAME.crt" "$CLUSTER_DIR/pki/node-$NODE_NAME.key"
  local port hz
  port=$(free_port); hz=$(free_port)
  kubelet_config "$port" "$hz"
  start kubelet "$K8S_BIN/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/kubelet.kubeconfig" \
    --root-dir="$N/kubelet" --cert-dir="$N/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v="${KUBELET_V:-2}"
  wait_for "kubelet /healthz" "$WAIT" kubelet curl -fsS "http://127.0.0.1:$hz/healthz"
  wait_for "condition Ready of node $NODE_NAME" "$WAIT" kubelet \
    kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  start_kube_proxy
  UP_DONE=1
  trap - EXIT INT TERM
  log "node $NODE_NAME Ready in $((SECONDS - t0))s (node IP $NODE_IP, pods $POD_SUBNET)"
}

# The kubelet creates iptables chains for its own monitoring (KUBE-IPTABLES-HINT,
# KUBE-KUBELET-CANARY) and a KUBE-FIREWALL rule dropping non-local traffic to 127.0.0.0/8.
# Remove them on down unless they existed before up (another kubelet on the host).
IPT_CHAINS=(filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY
  mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT)

iptables_record() {
  : >"$N/iptables.preexisting"
  local ipt tc
  for ipt in iptables ip6tables; do
    command -v $ipt >/dev/null || continue
    for tc in "${IPT_CHAINS[@]}"; do
      $ipt -w 5 -t "${tc%%:*}" -S "${tc#*:}" >/dev/null 2>&1 && echo "$ipt:$tc" >>"$N/iptables.preexisting"
    done
  done
  if command -v iptables >/dev/null && iptables -w 5 -t nat -S KUBE-SERVICES >/dev/null 2>&1; then
    echo kube-proxy >>"$N/iptables.preexisting"
  fi
  true
}

iptables_cleanup() {
  [[ -f $N/iptables.preexisting ]] || return 0
  local ipt tc t c
  for ipt in iptables ip6tables; do
    command -v $ipt >/dev/null || continue
    for tc in "${IPT_CHAINS[@]}"; do
      grep -qx "$ipt:$tc" "$N/iptables.preexisting" && continue
      t=${tc%%:*}; c=${tc#*:}
      $ipt -w 5 -t "$t" -S "$c" >/dev/null 2>&1 || continue
      if [[ $c == KUBE-FIREWALL ]]; then
        while $ipt -w 5 -t "$t" -D INPUT -j "$c" 2>/dev/null; do :; done
        while $ipt -w 5 -t "$t" -D OUTPUT -j "$c" 2>/dev/null; do :; done
      fi
      $ipt -w 5 -t "$t" -F "$c" 2>/dev/null || true
      $ipt -w 5 -t "$t" -X "$c" 2>/dev/null && log "removed $ipt $t chain $c"
    done
  done
  true
}

# Kill containerd shims that serve our socket (they outlive containerd by design).
kill_shims() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    if [[ $cmd == *containerd-shim*"$SOCK"* || $cmd == *containerd-shim*"$N/containerd"* ]]; then
      kill -KILL "${p#/proc/}" 2>/dev/null && log "killed shim ${p#/proc/}"
    fi
  done
  true
}

unmount_all() {
  local m i
  for ((i = 0; i < 5; i++)); do
    mapfile -t ms < <(awk -v d="$N" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((${#ms[@]})) || return 0
    for m in "${ms[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  true
}

# down [--keep-net]: stop the node and undo its host changes. --keep-net leaves the bridge
# (and so the node IP) in place for an API server still listening there; `net-down` then
# removes it. control-plane.sh down does exactly that around stopping the API server.
cmd_down() {
  [[ -d $N ]] || return 0
  stop kube-proxy 15
  stop kubelet 15
  stop coredns 5
  if alive kube-apiserver; then
    kubectl_admin delete node "$NODE_NAME" --ignore-not-found --wait=false --request-timeout=5s >/dev/null 2>&1 || true
  fi
  if alive containerd; then
    # Stop and remove all pod sandboxes through CRI so CNI releases IPs and veths.
    local crictl=$K8S_BIN/crictl
    if [[ -x $crictl ]]; then
      timeout 60 "$crictl" -r "unix://$SOCK" rmp -fa >/dev/null 2>&1 || log "warning: crictl rmp failed"
    fi
  fi
  stop containerd 15
  kill_shims
  unmount_all
  cleanup_cgroups
  if [[ -f $N/kube-proxy.yaml ]]; then
    # Remove kube-proxy's iptables rules, unless another kube-proxy had them before up.
    if grep -qx kube-proxy "$N/iptables.preexisting" 2>/dev/null; then
      log "KUBE-SERVICES existed before up: leaving kube-proxy rules alone"
    else
      timeout 60 "$K8S_BIN/kube-proxy" --cleanup --config="$N/kube-proxy.yaml" >>"$CLUSTER_DIR/logs/kube-proxy.log" 2>&1 ||
        log "warning: kube-proxy --cleanup failed"
    fi
  fi
  rm -f /var/lib/cni/results/"$CNI_NET"-* 2>/dev/null || true
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true # only if empty
  if [[ -f $N/sysctl.orig ]]; then
    while read -r kv; do sysctl -qw "$kv" || true; done <"$N/sysctl.orig"
    rm -f "$N/sysctl.orig"
    log "restored sysctls"
  fi
  # Everything but the network markers.
  find "$N" -mindepth 1 -maxdepth 1 ! -name net ! -name iptables.preexisting -exec rm -rf {} +
  log "node down"
  [[ ${1:-} == --keep-net ]] || cmd_net_down
}

cmd_net_down() {
  [[ -d $N ]] || return 0
  if [[ -f $N/net ]]; then
    ip link del "$BRIDGE" 2>/dev/null && log "deleted bridge $BRIDGE"
  fi
  iptables_cleanup # the kubelet's chains (after the kubelet stopped)
  rm -rf "$N"
}

case ${1:-} in
  up) cmd_up ;;
  net-up) cmd_net_up ;;
  node-ip) echo "$NODE_IP" ;;
  down) cmd_down "${2:-}" ;;
  net-down) cmd_net_down ;;
  *) echo "usage: $0 up|down [--keep-net]|net-up|net-down|node-ip" >&2; exit 2 ;;
esac
