# shellcheck shell=bash
# Shared helpers for tests/cluster/*.sh. Sourced, not executed.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORCHLIGHT_CACHE=${PORCHLIGHT_CACHE:-/root/.cache/porchlight}
K8S_VERSION=${K8S_VERSION:-1.34.4}
K8S_BIN=${K8S_BIN:-$PORCHLIGHT_CACHE/k8s/$K8S_VERSION/bin}
# Throwaway state of one cluster: certs, kubeconfigs, etcd data, logs, pid files.
CLUSTER_DIR=${PORCHLIGHT_CLUSTER_DIR:-${TMPDIR:-/tmp}/porchlight-cluster}

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${LOG_TAG:-cluster}" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_bins() {
  local b
  for b in "$@"; do
    [[ -x $K8S_BIN/$b ]] || die "$K8S_BIN/$b missing: run tests/cluster/build.sh first"
  done
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME CMD...: run CMD in its own session, log to $CLUSTER_DIR/logs/NAME.log,
# remember its pid in $CLUSTER_DIR/pids/NAME.pid.
start() {
  local name=$1; shift
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  setsid "$@" >>"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$CLUSTER_DIR/pids/$name.pid"
  log "started $name (pid $!, log $CLUSTER_DIR/logs/$name.log)"
}

alive() { # alive NAME
  local f=$CLUSTER_DIR/pids/$1.pid
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# stop NAME [GRACE_SECONDS]: TERM the recorded pid (and its session), wait, then KILL.
stop() {
  local name=$1 grace=${2:-10} f pid i
  f=$CLUSTER_DIR/pids/$name.pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # The process was started with setsid, so its pid is its session and group id.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for ${grace}s; SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$f"
}

# wait_for DESC TIMEOUT_SECONDS NAME CMD...: poll CMD every 0.5 s until it succeeds;
# fail if the process NAME dies or the timeout passes.
wait_for() {
  local desc=$1 timeout=$2 name=$3 start=$SECONDS; shift 3
  until "$@" >/dev/null 2>&1; do
    if [[ -n $name ]] && ! alive "$name"; then
      tail -n 30 "$CLUSTER_DIR/logs/$name.log" >&2 || true
      die "$name exited while waiting for $desc"
    fi
    if ((SECONDS - start >= timeout)); then
      [[ -n $name ]] && { tail -n 30 "$CLUSTER_DIR/logs/$name.log" >&2 || true; }
      die "timed out after ${timeout}s waiting for $desc"
    fi
    sleep 0.5
  done
  log "$desc ready after $((SECONDS - start))s"
}

# kubeconfig FILE SERVER CA CERT KEY
write_kubeconfig() {
  local file=$1 server=$2 ca=$3 cert=$4 key=$5
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: porchlight
  cluster:
    server: $server
    certificate-authority: $ca
users:
- name: user
  user:
    client-certificate: $cert
    client-key: $key
contexts:
- name: porchlight
  context: {cluster: porchlight, user: user, namespace: default}
current-context: porchlight
EOF
}

# client_cert NAME CN [O]: EC P-256 client certificate signed by the cluster CA.
client_cert() {
  local name=$1 cn=$2 o=${3:-} subj pki=$CLUSTER_DIR/pki
  subj="/CN=$cn"; [[ -n $o ]] && subj="/O=$o$subj"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 7 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$CLUSTER_DIR/admin.kubeconfig" "$@"; }
