#!/usr/bin/env bash
# Local Kubernetes control plane as plain processes on 127.0.0.1 (no Docker).
# With --with-node the API server listens on the node IP instead (see node.sh).
#
#   tests/cluster/control-plane.sh up [--with-node]
#                                         # etcd, kube-apiserver, kube-controller-manager,
#                                         # kube-scheduler on free loopback ports; waits until ready;
#                                         # --with-node: then node.sh up (kubelet + containerd, root)
#   tests/cluster/control-plane.sh env    # prints `export KUBECONFIG=... PATH=...`
#   tests/cluster/control-plane.sh down   # stops everything and deletes the state dir
#   tests/cluster/control-plane.sh status
#
# Binaries: tests/cluster/build.sh (${PORCHLIGHT_CACHE:-/root/.cache/porchlight}/k8s/<v>/bin).
# State (throwaway): ${PORCHLIGHT_CLUSTER_DIR:-/tmp/porchlight-cluster}: pki/, etcd/, logs/,
# pids/, ports, admin.kubeconfig (user kubernetes-admin in system:masters).
# `up` tears down what it started if it fails or is interrupted.
set -euo pipefail
LOG_TAG=control-plane
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICE_CIDR=${SERVICE_CIDR:-10.0.0.0/24}
WAIT=${CLUSTER_WAIT_SECONDS:-90}

gen_pki() {
  local pki=$CLUSTER_DIR/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=porchlight-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # API server serving certificate.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/apiserver.key" -subj "/CN=kube-apiserver" -out "$pki/apiserver.csr" 2>/dev/null
  cat >"$pki/apiserver.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$API_ADDR,IP:${SERVICE_CIDR%.*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local${APISERVER_EXTRA_SANS:+,$APISERVER_EXTRA_SANS}
EOF
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 7 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  rm -f "$pki/apiserver.csr" "$pki/apiserver.ext"
  client_cert admin kubernetes-admin system:masters
  client_cert kube-controller-manager system:kube-controller-manager
  client_cert kube-scheduler system:kube-scheduler
  client_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  # Service-account signing key (RSA, as kubeadm and local-up-cluster.sh use).
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

cmd_up() {
  local with_node=0
  [[ ${1:-} == --with-node ]] && with_node=1
  need_bins etcd kube-apiserver kube-controller-manager kube-scheduler kubectl
  if [[ -d $CLUSTER_DIR ]]; then
    local f
    for f in "$CLUSTER_DIR"/pids/*.pid; do
      [[ -f $f ]] && alive "$(basename "$f" .pid)" &&
        die "$CLUSTER_DIR already has a running cluster; run '$0 down' first"
    done
    log "cleaning up the leftovers of an earlier run in $CLUSTER_DIR"
    cmd_down
  fi
  mkdir -p "$CLUSTER_DIR"/{logs,pids,etcd}
  # die() exits, which skips ERR traps: tear down from an EXIT trap unless up finished.
  UP_DONE=0
  trap 'if ((UP_DONE == 0)); then log "up failed or interrupted: tearing down"; cmd_down; fi' EXIT
  trap 'exit 130' INT TERM
  local t0=$SECONDS pki=$CLUSTER_DIR/pki
  # With a node the API server listens on the node IP (on the harness's bridge) instead of
  # 127.0.0.1, so that pods can reach it too (node.sh maps the kubernetes Service IP to it).
  API_ADDR=127.0.0.1
  if ((with_node)); then
    "$HERE/node.sh" net-up
    API_ADDR=$("$HERE/node.sh" node-ip)
  fi
  gen_pki

  local etcd_port etcd_peer api_port kcm_port sched_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port)
  cat >"$CLUSTER_DIR/ports" <<EOF
ETCD_PORT=$etcd_port
APISERVER_PORT=$api_port
KCM_PORT=$kcm_port
SCHEDULER_PORT=$sched_port
EOF

  start etcd "$K8S_BIN/etcd" --name=node0 --data-dir="$CLUSTER_DIR/etcd" --unsafe-no-fsync=true \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="node0=http://127.0.0.1:$etcd_peer" --listen-metrics-urls="" \
    --log-level=warn
  wait_for "etcd" "$WAIT" etcd curl -fsS "http://127.0.0.1:$etcd_port/health"

  local server=https://$API_ADDR:$api_port
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$API_ADDR" --advertise-address="$API_ADDR" --secure-port="$api_port" \
    --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
    --endpoint-reconciler-type="$([[ $API_ADDR == 127.0.0.1 ]] && echo none || echo lease)" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --enable-priority-and-fairness=false \
    --profiling=false
  write_kubeconfig "$CLUSTER_DIR/admin.kubeconfig" "$server" "$pki/ca.crt" "$pki/admin.crt" "$pki/admin.key"
  wait_for "kube-apiserver /readyz" "$WAIT" kube-apiserver \
    curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"

  write_kubeconfig "$CLUSTER_DIR/kube-controller-manager.kubeconfig" "$server" "$pki/ca.crt" \
    "$pki/kube-controller-manager.crt" "$pki/kube-controller-manager.key"
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/kube-controller-manager.kubeconfig" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --controllers='*,bootstrapsigner,tokencleaner' \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$CLUSTER_DIR/kcm-certs" \
    --profiling=false
  write_kubeconfig "$CLUSTER_DIR/kube-scheduler.kubeconfig" "$server" "$pki/ca.crt" \
    "$pki/kube-scheduler.crt" "$pki/kube-scheduler.key"
  cat >"$CLUSTER_DIR/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $CLUSTER_DIR/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
  start kube-scheduler "$K8S_BIN/kube-scheduler" --config="$CLUSTER_DIR/kube-scheduler.yaml" \
    --authentication-kubeconfig="$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$CLUSTER_DIR/scheduler-certs"
  wait_for "kube-controller-manager /healthz" "$WAIT" kube-controller-manager \
    curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
  wait_for "kube-scheduler /healthz" "$WAIT" kube-scheduler \
    curl -fsSk "https://127.0.0.1:$sched_port/healthz"
  # Pods are refused until the service-account controller has made the default SA.
  wait_for "default service account" "$WAIT" kube-controller-manager \
    kubectl_admin -n default get serviceaccount default
  if ((with_node)); then "$HERE/node.sh" up; fi
  UP_DONE=1
  trap - EXIT INT TERM
  log "cluster up in $((SECONDS - t0))s: $server"
  log "use it with: eval \$($0 env)"
}

cmd_env() {
  [[ -f $CLUSTER_DIR/admin.kubeconfig ]] || die "no cluster in $CLUSTER_DIR (run '$0 up')"
  echo "export KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig"
  echo "export PATH=$K8S_BIN:\$PATH"
}

cmd_status() {
  local n
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if alive "$n"; then echo "$n: running (pid $(cat "$CLUSTER_DIR/pids/$n.pid"))"; else echo "$n: stopped"; fi
  done
}

cmd_down() {
  # Stop in reverse order. A node started by node.sh must be stopped first.
  # The node's bridge carries the API server's address when it runs with a node:
  # remove it only after the API server stopped, or its shutdown hangs.
  if [[ -d $CLUSTER_DIR/node ]]; then "$HERE/node.sh" down --keep-net || true; fi
  local n
  # Wait for these two only: during a failed `up` the components are children of this shell.
  local p1 p2
  stop kube-scheduler 15 & p1=$!
  stop kube-controller-manager 15 & p2=$!
  wait "$p1" "$p2"
  for n in kube-apiserver etcd; do stop "$n" 15; done
  if [[ -d $CLUSTER_DIR/node ]]; then "$HERE/node.sh" net-down || true; fi
  if [[ -d $CLUSTER_DIR ]]; then
    if [[ -n ${KEEP_CLUSTER_DIR:-} ]]; then
      log "kept $CLUSTER_DIR (KEEP_CLUSTER_DIR set)"
    else
      rm -rf "$CLUSTER_DIR"
      log "removed $CLUSTER_DIR"
    fi
  fi
}

case ${1:-} in
  up) cmd_up "${2:-}" ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up [--with-node]|down|env|status" >&2; exit 2 ;;
esac
