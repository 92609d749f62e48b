#!/usr/bin/env bash
# End-to-end tests of Porchlight on a real single-node Kubernetes cluster
# (tests/cluster: API server, kubelet, containerd, runc, CNI bridge,
# kube-proxy, all local processes; images built from the project's own
# Dockerfiles by tests/e2e/images.sh, no registry).
#
#   tests/e2e/run.sh            # needs root (the node); installs Debian packages if missing
#   E2E_ONLY="kill drain" tests/e2e/run.sh   # install, then only those checks
#
# Prints one PASS/FAIL line per check and ends with "<N> passed, <M> failed";
# exits non-zero on any failure. Without root (or apt) a developer gets a
# SKIP message; with CI set, anything missing is a failure.
# Traffic goes only to the node's bridge and pod IPs (10.246.0.x), never to
# a Service ClusterIP.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=$ROOT/tests/cluster
E2E=$ROOT/tests/e2e
export PORCHLIGHT_CACHE=${PORCHLIGHT_CACHE:-/root/.cache/porchlight}
export PORCHLIGHT_CLUSTER_DIR=${PORCHLIGHT_CLUSTER_DIR:-/tmp/porchlight-cluster}
OUT=${E2E_OUT:-/tmp/porchlight-e2e}
rm -rf "$OUT" && mkdir -p "$OUT"
NS=porchlight-system
START=$SECONDS

log() { printf '[e2e %s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*"; }
skip_or_die() {
  if [[ -n ${CI:-} ]]; then
    printf 'FAIL: e2e prerequisites: %s (CI is set, so this is an error)\n0 passed, 1 failed\n' "$*"
    exit 1
  fi
  printf 'SKIP: e2e tests: %s\n' "$*"
  echo "  To run them: as root on Debian bookworm, tests/e2e/run.sh (it installs the packages it needs)."
  exit 0
}

# --- prerequisites --------------------------------------------------------------
[[ $(id -u) == 0 ]] || skip_or_die "not root (the node needs root: bridge, containerd, kubelet)"
PKGS=(containerd runc containernetworking-plugins debootstrap busybox-static iptables iproute2
  openssl gcc libc6-dev python3 curl jq file podman)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || skip_or_die "missing packages and no apt-get: ${missing[*]}"
  log "apt-get install ${missing[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >"$OUT/apt.log" 2>&1 ||
    { tail -20 "$OUT/apt.log"; skip_or_die "apt-get install failed: ${missing[*]}"; }
fi

# --- build ----------------------------------------------------------------------
log "cluster binaries (tests/cluster/build.sh; cold ~10-15 min, then instant)"
# Debian's golang-go (1.19) is too old for Kubernetes 1.34; the Go toolchain
# comes from go.dev and is only needed until the binaries are cached.
[[ -x $("$CLUSTER/build.sh" --print)/kubelet && -x $("$CLUSTER/build.sh" --print)/coredns ]] || command -v go >/dev/null ||
  skip_or_die "go not found on PATH (Go >= 1.24 from https://go.dev/dl/ builds the cluster binaries)"
"$CLUSTER/build.sh" >"$OUT/cluster-build.log" 2>&1 || { tail -30 "$OUT/cluster-build.log"; skip_or_die "tests/cluster/build.sh failed"; }
K8S_BIN=$("$CLUSTER/build.sh" --print)
log "base images (tests/cluster/images.sh --debian)"
"$CLUSTER/images.sh" --debian >"$OUT/cluster-images.log" 2>&1 || { tail -30 "$OUT/cluster-images.log"; skip_or_die "tests/cluster/images.sh failed"; }
log "platform images (tests/e2e/images.sh)"
T=$SECONDS
"$E2E/images.sh" 2>&1 | tee "$OUT/images.log" | sed 's/^/  /'
((PIPESTATUS[0] == 0)) || skip_or_die "tests/e2e/images.sh failed"
log "images ready in $((SECONDS - T)) s"
(cd "$ROOT" && nice -n 10 cargo build --release --locked -q -p porchlight-load --bin porchlight-load) ||
  skip_or_die "cargo build of porchlight-load failed"
LOAD=$ROOT/target/release/porchlight-load

# --- cluster --------------------------------------------------------------------
dump_logs() {
  echo "===== diagnostics ====="
  kubectl get fn,deploy,pods -A -o wide 2>&1 | sed 's/^/  /'
  kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -30 | sed 's/^/  /'
  echo "----- controller log (tail) -----"
  kubectl -n $NS logs deploy/porchlight-controller --tail=80 2>&1 | sed 's/^/  /'
  echo "----- gateway logs (tail) -----"
  kubectl -n $NS logs -l app.kubernetes.io/name=porchlight-gateway --prefix --tail=60 2>&1 | sed 's/^/  /'
  echo "----- NATS log (tail) -----"
  kubectl -n $NS logs porchlight-nats-0 --tail=30 2>&1 | sed 's/^/  /'
  echo "----- kubelet log (tail) -----"
  tail -40 "$PORCHLIGHT_CLUSTER_DIR/logs/kubelet.log" 2>&1 | sed 's/^/  /'
}
finish() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n ${BG_PIDS:-} ]] && kill $BG_PIDS 2>/dev/null
  if ((FAILED > 0)) && [[ -f $PORCHLIGHT_CLUSTER_DIR/admin.kubeconfig ]]; then dump_logs; fi
  log "tearing the cluster down"
  "$CLUSTER/control-plane.sh" down >"$OUT/down.log" 2>&1 || { echo "control-plane.sh down failed:"; tail -20 "$OUT/down.log"; }
  log "whole run: $((SECONDS - START)) s"
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  ((FAILED == 0 && rc == 0)) || exit 1
  exit 0
}
trap finish EXIT
trap 'echo "interrupted"; FAILED=$((FAILED + 1)); exit 130' INT TERM

log "control-plane.sh up --with-node"
T=$SECONDS
if ! "$CLUSTER/control-plane.sh" up --with-node >"$OUT/up.log" 2>&1; then
  tail -30 "$OUT/up.log"
  fail "cluster up (control-plane.sh up --with-node)"
  exit 1
fi
log "cluster up in $((SECONDS - T)) s"
eval "$("$CLUSTER/control-plane.sh" env)"
export PATH=$K8S_BIN:$PATH

# --- helpers ----------------------------------------------------------------------
# wait_until SECONDS CMD...: polls CMD every 0.5 s; bounded.
wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.5
  done
}
GW=""
# The Lambda API needs SigV4 (the deploy/ default): curl signs as the AWS CLI
# does, with the key deploy/new-key.sh made (check_install).
SIGV4=()
# invoke FUNCTION PAYLOAD OUTPREFIX [MAX_TIME]: writes OUTPREFIX.{body,headers}, prints the HTTP status.
invoke() {
  curl -sS --max-time "${4:-60}" "${SIGV4[@]}" -o "$3.body" -D "$3.headers" -w '%{http_code}' \
    -H 'content-type: application/json' --data "$2" \
    "http://$GW:8080/2015-03-31/functions/$1/invocations" 2>"$3.err"
}
header() { sed -n "s/^$2: *//Ip" "$1.headers" | tr -d '\r' | tail -1; }
fn_status() { kubectl get fn "$1" -o jsonpath='{.status.desiredReplicas} {.status.replicas} {.status.readyReplicas}' 2>/dev/null; }
pods_of() { kubectl get pods -l "porchlight.dev/function=$1" -o name 2>/dev/null; }
no_pods_of() { [[ -z $(pods_of "$1") ]]; }
gateway_knows() { curl -sf --max-time 2 "http://$GW:8081/v1/functions" | jq -e --arg f "$1" '.functions[] | select(.name == $f)'; }
in_flight() { curl -sf --max-time 2 "http://$GW:8081/v1/functions" | jq -r --arg f "$1" '.functions[] | select(.name == $f) | .inFlight'; }
now_ms() { date +%s%3N; }
in_flight_at_least_1() { [[ $(in_flight "$1") -ge 1 ]]; }

# --- a. install the platform -----------------------------------------------------
check_install() {
  # An access key first (as the README says), so the gateway starts with it.
  kubectl create namespace $NS >/dev/null 2>&1
  local keys
  keys=$("$ROOT/deploy/new-key.sh" 2>"$OUT/new-key.log") || { cat "$OUT/new-key.log"; fail "install: deploy/new-key.sh"; return 1; }
  eval "$keys"
  [[ -n ${AWS_ACCESS_KEY_ID:-} && -n ${AWS_SECRET_ACCESS_KEY:-} ]] || { fail "install: deploy/new-key.sh printed a key"; return 1; }
  SIGV4=(--aws-sigv4 "aws:amz:$AWS_REGION:lambda" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
  # NATS's claim (deploy/nats.yaml) needs a volume, and this cluster has no
  # provisioner: a hostPath PersistentVolume reserved for that claim.
  local data=$PORCHLIGHT_CLUSTER_DIR/volumes/nats-0
  mkdir -p "$data" && chown 65532:65532 "$data"
  kubectl apply -f - >"$OUT/pv.log" 2>&1 <<YAML || { cat "$OUT/pv.log"; fail "install: NATS's PersistentVolume"; return 1; }
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-nats-0}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  claimRef: {namespace: $NS, name: data-porchlight-nats-0}
  hostPath: {path: $data, type: Directory}
YAML
  log "kubectl apply -k deploy/"
  if ! kubectl apply -k "$ROOT/deploy/" >"$OUT/apply.log" 2>&1; then
    cat "$OUT/apply.log"; fail "install: kubectl apply -k deploy/"; return 1
  fi
  local bad
  bad=$(kubectl -n $NS get deploy,statefulset -o jsonpath='{range .items[*].spec.template.spec.containers[*]}{.imagePullPolicy}{"\n"}{end}' | grep -vx IfNotPresent)
  [[ -z $bad ]] || { fail "install: imagePullPolicy is not IfNotPresent ($bad)"; return 1; }
  if ! { kubectl -n $NS rollout status statefulset/porchlight-nats --timeout=120s &&
    kubectl -n $NS wait --for=condition=Available deploy/porchlight-controller deploy/porchlight-gateway --timeout=120s &&
    kubectl -n $NS rollout status deploy/porchlight-gateway --timeout=60s; } >"$OUT/wait.log" 2>&1; then
    cat "$OUT/wait.log"; kubectl -n $NS get pods,pvc -o wide; kubectl -n $NS describe pods | tail -40
    fail "install: NATS, controller and both gateways Ready within 120 s"; return 1
  fi
  GW=$(gateway_pod_ip)
  [[ $GW == 10.246.0.* ]] || { fail "install: gateway pod IP in the pod subnet (got '$GW')"; return 1; }
  NATS=$(nats_ip)
  wait_until 30 gateways_on_nats 2 ||
    { fail "install: both gateways connected to NATS at $NATS (by its Service name, through the cluster DNS)"; return 1; }
  if ! wait_until 30 curl -sf --max-time 2 "http://$GW:8081/ready"; then
    fail "install: gateway /ready on its internal port $GW:8081"; return 1
  fi
  local path code
  for path in /v1/functions /v1/dead-letters /v1/concurrency /metrics /ready; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$GW:8080$path")
    [[ $code == 404 ]] || { fail "install: $path is not served on the public port 8080 (HTTP $code)"; return 1; }
  done
  code=$(curl -s -D "$OUT/unsigned.headers" -o /dev/null -w '%{http_code}' --max-time 2 "http://$GW:8080/2015-03-31/functions/")
  [[ $code == 403 && $(header "$OUT/unsigned" x-amzn-ErrorType) == MissingAuthenticationTokenException* ]] ||
    { fail "install: an unsigned ListFunctions is refused (HTTP $code, $(header "$OUT/unsigned" x-amzn-ErrorType))"; return 1; }
  code=$(curl -s "${SIGV4[@]}" -o /dev/null -w '%{http_code}' --max-time 2 "http://$GW:8080/2015-03-31/functions/")
  [[ $code == 200 ]] || { fail "install: a signed ListFunctions on the public port 8080 (HTTP $code)"; return 1; }
  kubectl -n $NS get pods -o wide
  pass "install: kubectl apply -k deploy/; NATS (JetStream on a PersistentVolumeClaim), controller and two gateway pods Ready from local images, both gateways on nats://porchlight-nats:4222; gateway public on $GW:8080 (Lambda API signed with the key from deploy/new-key.sh; unsigned -> 403), internal endpoints only on :8081"
}

# --- b. hello: kubectl get fn, cold start from zero -----------------------------
check_hello() {
  kubectl apply -f "$ROOT/examples/hello.yaml" || { fail "hello: kubectl apply -f examples/hello.yaml"; return 1; }
  wait_until 30 kubectl get deploy fn-hello || { fail "hello: controller created Deployment fn-hello"; return 1; }
  wait_until 30 gateway_knows hello || { fail "hello: gateway lists the Function"; return 1; }
  kubectl get fn
  local n
  n=$(kubectl get fn --no-headers 2>/dev/null | awk '$1 == "hello"' | wc -l)
  ((n == 1)) || { fail "hello: kubectl get fn shows hello"; return 1; }
  pass "hello: kubectl get fn shows the Function; Deployment fn-hello reconciled"
  [[ -z $(pods_of hello) ]] || log "note: hello already has pods before the first event"
  local t0 t1 code
  t0=$(now_ms)
  code=$(invoke hello '{"e2e":"first"}' "$OUT/hello-first" 60)
  t1=$(now_ms)
  COLD_MS=$((t1 - t0))
  local cold body
  cold=$(header "$OUT/hello-first" X-Porchlight-Cold-Start)
  body=$(cat "$OUT/hello-first.body" 2>/dev/null)
  log "first invocation: HTTP $code in ${COLD_MS} ms, cold-start=$cold, environment=$(header "$OUT/hello-first" X-Porchlight-Environment), body: $body"
  echo "SCALE-FROM-ZERO: ${COLD_MS} ms from the first event to its response (target < 2000 ms, reported, not asserted)"
  if [[ $code == 200 && $body == *'Hello from Lambda!'* ]] && [[ -n $(pods_of hello) ]]; then
    pass "hello: first invocation scaled from zero to a real pod ($(pods_of hello | head -1)) and returned the handler's result (cold-start header: ${cold:-absent})"
  else
    cat "$OUT/hello-first.err" 2>/dev/null
    fail "hello: first invocation (HTTP $code, body: $body)"; return 1
  fi
  # Reuse is possible, never guaranteed: the autoscaler may have started a
  # second environment while the first event waited. Serial calls soon land
  # on an environment that already ran one, and that one must be warm.
  local seen=" $(header "$OUT/hello-first" X-Porchlight-Environment) " i env reused=""
  for i in 1 2 3 4 5; do
    code=$(invoke hello '{"e2e":"again"}' "$OUT/hello-again-$i" 30)
    env=$(header "$OUT/hello-again-$i" X-Porchlight-Environment)
    cold=$(header "$OUT/hello-again-$i" X-Porchlight-Cold-Start)
    [[ $code == 200 ]] || break
    # The gateway sends X-Porchlight-Cold-Start only on cold starts.
    if [[ $seen == *" $env "* ]]; then reused=${cold:-false}; break; fi
    seen+="$env "
  done
  if [[ $code == 200 && $reused == false ]]; then
    pass "hello: an invocation on an environment that already ran one is a warm start ($env, call $((i + 1)))"
  else
    fail "hello: warm start on a reused environment (HTTP $code, environment '$env', cold-start '${reused:-never reused}', environments:$seen)"
  fi
}

# --- b2. a Node.js function, frozen between invocations -------------------------
# The node runtime's process (on this host: containers are processes) is
# stopped (state T) while idle.
node_frozen() {
  local pid
  for pid in $(pgrep -f 'node /var/runtime/bootstrap.js'); do
    [[ $(ps -o stat= -p "$pid") == T* ]] && return 0
  done
  return 1
}
check_node() {
  kubectl apply -f "$ROOT/examples/hello-node.yaml" >/dev/null || { fail "node: kubectl apply -f examples/hello-node.yaml"; return 1; }
  wait_until 30 gateway_knows hello-node || { fail "node: gateway lists hello-node"; return 1; }
  local code body image freeze
  code=$(invoke hello-node '{"name":"Ada"}' "$OUT/node" 60)
  body=$(cat "$OUT/node.body" 2>/dev/null)
  image=$(kubectl get pods -l porchlight.dev/function=hello-node -o jsonpath='{.items[0].spec.containers[0].image}' 2>/dev/null)
  freeze=$(kubectl get pods -l porchlight.dev/function=hello-node -o jsonpath='{.items[0].spec.containers[0].env[?(@.name=="PORCHLIGHT_FREEZE")].value}' 2>/dev/null)
  if [[ $code == 200 && $(jq -r .greeting <<<"$body" 2>/dev/null) == "hello Ada" && $image == */runtime-node:dev ]] &&
    [[ $freeze == true ]] && wait_until 10 node_frozen; then
    pass "node: nodejs20.x function (examples/hello-node.yaml) answered from a pod of $image; the pod has PORCHLIGHT_FREEZE=true and its node process is stopped (T) while idle"
  else
    fail "node: HTTP $code, body: $body, image: $image, PORCHLIGHT_FREEZE=$freeze, frozen: $(node_frozen && echo yes || echo no)"
  fi
  kubectl delete -f "$ROOT/examples/hello-node.yaml" --wait=false >/dev/null 2>&1
}

# --- c. load: scale out, then back to zero ------------------------------------------
check_scale() {
  cat >"$OUT/scale.yaml" <<'EOF'
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-scale
spec:
  runtime: python3.12
  handler: app.lambda_handler
  code:
    inline: |
      import time
      def lambda_handler(event, context):
          time.sleep(0.05)
          return {"statusCode": 200, "body": "scaled"}
  timeoutSeconds: 10
  scaling:
    maxScale: 4
    scaleToZeroAfter: 10s
    stableWindow: 6s
EOF
  kubectl apply -f "$OUT/scale.yaml" || { fail "scale: apply e2e-scale"; return 1; }
  wait_until 30 gateway_knows e2e-scale || { fail "scale: gateway lists e2e-scale"; return 1; }
  # Watch the Function's status, and what the gateway reports as desired, while
  # the load runs (bounded by the load's own length).
  (
    for _ in $(seq 1 60); do
      printf '%s %s %s\n' "$(date +%s)" "$(fn_status e2e-scale)" \
        "$(curl -sf --max-time 1 "http://$GW:8081/v1/functions" | jq -r '.functions[] | select(.name == "e2e-scale") | .desired')"
      sleep 1
    done
  ) >"$OUT/scale-status.txt" &
  local watcher=$!
  BG_PIDS="$watcher"
  log "load: 50 concurrent callers for 8 s through $GW:8080, signed (environments from the Function status)"
  timeout 120 "$LOAD" --target "http://$GW:8080" --function e2e-scale --concurrency 50 --duration 8s \
    --scale-source kubernetes --namespace default \
    --observe-after 1s --timeout 30s --quiet --out "$OUT/load" >"$OUT/load.log" 2>&1
  local lrc=$?
  local peak_desired peak_replicas gw_desired load_desired load_ready
  peak_desired=$(awk '{ if ($2 + 0 > m) m = $2 + 0 } END { print m + 0 }' "$OUT/scale-status.txt")
  peak_replicas=$(awk '{ if ($3 + 0 > m) m = $3 + 0 } END { print m + 0 }' "$OUT/scale-status.txt")
  gw_desired=$(awk '{ if ($5 + 0 > m) m = $5 + 0 } END { print m + 0 }' "$OUT/scale-status.txt")
  load_desired=$(jq -r '.functions[0].peakDesired // 0' "$OUT/load/summary.json" 2>/dev/null)
  load_ready=$(jq -r '.functions[0].peakReady // 0' "$OUT/load/summary.json" 2>/dev/null)
  kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null; BG_PIDS=""
  tail -15 "$OUT/load.log" | sed 's/^/  /'
  kubectl get fn e2e-scale
  kubectl get events --field-selector involvedObject.kind=Function,involvedObject.name=e2e-scale -o wide | tail -10
  local scaled_events
  scaled_events=$(kubectl get events --field-selector involvedObject.kind=Function,involvedObject.name=e2e-scale \
    -o jsonpath='{range .items[*]}{.reason} {.message}{"\n"}{end}' | grep -ci 'scal')
  log "load exit $lrc; peak desiredReplicas $peak_desired, peak replicas $peak_replicas, scaling Events: $scaled_events"
  log "peak desired as the gateway's /v1/functions reports it: $gw_desired; load report (Function status): desired $load_desired, ready $load_ready"
  if ((lrc == 0 && peak_desired > 1 && peak_replicas > 1 && scaled_events > 0)); then
    pass "scale: 50 concurrent callers scaled e2e-scale above one environment (peak desired $peak_desired, replicas $peak_replicas; $scaled_events scaling Events)"
  else
    fail "scale: above one environment under load (load exit $lrc, peak desired $peak_desired, replicas $peak_replicas, scaling Events $scaled_events)"
  fi
  if ((gw_desired == peak_desired && load_desired == peak_desired && load_ready > 1)); then
    pass "scale: the gateway's /v1/functions and porchlight-load --scale-source kubernetes both saw the autoscaler's desired $peak_desired (load report: ready $load_ready)"
  else
    fail "scale: desired as reported by the gateway ($gw_desired) and the load tool's Function-status observer ($load_desired, ready $load_ready) should match the status ($peak_desired)"
  fi
  log "waiting (at most 120 s) for scale to zero after the 10 s idle window"
  local T=$SECONDS
  if wait_until 120 no_pods_of e2e-scale && [[ $(kubectl get deploy fn-e2e-scale -o jsonpath='{.spec.replicas}') == 0 ]]; then
    kubectl get fn e2e-scale
    pass "scale: back to zero after the idle window, pods gone ($((SECONDS - T)) s after the load)"
  else
    kubectl get fn e2e-scale; kubectl get pods -l porchlight.dev/function=e2e-scale
    fail "scale: back to zero with no pods within 120 s"
  fi
}

# --- c2. a spec change rolls out; a field dropped from the spec is gone -----------
update_yaml() { # update_yaml ENV-LINE VERSION
  cat <<EOF
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-update
spec:
  runtime: python3.12
  handler: app.lambda_handler
  code:
    inline: |
      import os
      def lambda_handler(event, context):
          return "$2 " + os.environ.get("GREETING", "none")
$1
  scaling:
    minScale: 1
EOF
}
template_env() { kubectl get deploy fn-e2e-update -o jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}'; }
answers() { [[ $(invoke e2e-update '{}' "$OUT/update" 20) == 200 && $(cat "$OUT/update.body") == "$1" ]]; }
check_update() {
  update_yaml '  env: {GREETING: hi}' v1 | kubectl apply -f - >/dev/null || { fail "update: apply e2e-update v1"; return 1; }
  if ! wait_until 90 answers '"v1 hi"'; then
    fail "update: v1 answers \"v1 hi\" (last: $(cat "$OUT/update.body" 2>/dev/null))"; return 1
  fi
  update_yaml '' v2 | kubectl apply -f - >/dev/null || { fail "update: apply e2e-update v2"; return 1; }
  local replicas
  if wait_until 90 answers '"v2 none"' && ! template_env | grep -q '^GREETING='; then
    replicas=$(kubectl get deploy fn-e2e-update -o jsonpath='{.spec.replicas}')
    pass "update: new code rolled out, and GREETING, dropped from the spec, is gone from the pod template (replicas kept at $replicas)"
  else
    template_env | sed 's/^/  env: /'
    fail "update: v2 without GREETING (last answer: $(cat "$OUT/update.body" 2>/dev/null))"
  fi
  kubectl delete fn e2e-update --wait=false >/dev/null 2>&1

  # Code in the user's own ConfigMap: an edit to it rolls the environments.
  cm_yaml() {
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: e2e-cm-code}\ndata:\n  app.py: |\n    def lambda_handler(event, context):\n        return "%s"\n' "$1"
  }
  cm_yaml cm-v1 | kubectl apply -f - >/dev/null || { fail "update: apply ConfigMap e2e-cm-code"; return 1; }
  kubectl apply -f - >/dev/null <<'EOF' || { fail "update: apply e2e-cm"; return 1; }
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-cm
spec:
  runtime: python3.12
  handler: app.lambda_handler
  code:
    configMap: {name: e2e-cm-code}
  scaling:
    minScale: 1
EOF
  cm_answers() { [[ $(invoke e2e-cm '{}' "$OUT/cm" 20) == 200 && $(cat "$OUT/cm.body") == "$1" ]]; }
  if ! wait_until 90 cm_answers '"cm-v1"'; then
    fail "update: e2e-cm answers \"cm-v1\" from its ConfigMap (last: $(cat "$OUT/cm.body" 2>/dev/null))"; return 1
  fi
  local t
  t=$SECONDS
  cm_yaml cm-v2 | kubectl apply -f - >/dev/null
  if wait_until 90 cm_answers '"cm-v2"'; then
    pass "update: editing the user's code ConfigMap rolled e2e-cm to the new code ($((SECONDS - t)) s)"
  else
    fail "update: e2e-cm still answers $(cat "$OUT/cm.body" 2>/dev/null) 90 s after its ConfigMap changed"
  fi
  kubectl delete fn e2e-cm --wait=false >/dev/null 2>&1
  kubectl delete cm e2e-cm-code --wait=false >/dev/null 2>&1
}

# --- c3. a function whose init fails: the caller gets the init error ------------------
check_init_failure() {
  kubectl apply -f - >/dev/null <<'EOF' || { fail "init failure: apply e2e-broken"; return 1; }
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-broken
spec:
  runtime: python3.12
  handler: app.lambda_handler
  code:
    inline: |
      import no_such_module_e2e
      def lambda_handler(event, context):
          return "unreachable"
  timeoutSeconds: 30
EOF
  wait_until 30 gateway_knows e2e-broken || { fail "init failure: gateway lists e2e-broken"; return 1; }
  local t0 code type reason message
  t0=$(now_ms)
  code=$(invoke e2e-broken '{}' "$OUT/broken-first" 60)
  type=$(jq -r .errorType "$OUT/broken-first.body" 2>/dev/null)
  log "first invocation of e2e-broken: HTTP $code after $(($(now_ms) - t0)) ms, $(header "$OUT/broken-first" X-Amz-Function-Error), $(cat "$OUT/broken-first.body" 2>/dev/null | cut -c1-200)"
  if [[ $code == 200 && $(header "$OUT/broken-first" X-Amz-Function-Error) == Unhandled && $type == Runtime.ImportModuleError ]] &&
    jq -e '.errorMessage | test("no_such_module_e2e")' "$OUT/broken-first.body" >/dev/null 2>&1; then
    pass "init failure: the first caller got the init error from a real pod (200, X-Amz-Function-Error: Unhandled, Runtime.ImportModuleError)"
  else
    kubectl get fn e2e-broken -o yaml | sed -n '/^status:/,$p'; kubectl get pods -l porchlight.dev/function=e2e-broken -o wide
    fail "init failure: expected 200 + Unhandled + Runtime.ImportModuleError (HTTP $code, errorType '$type')"
  fi
  reason=$(kubectl get fn e2e-broken -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')
  message=$(kubectl get fn e2e-broken -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')
  local wide
  wide=$(kubectl get fn e2e-broken -o wide)
  echo "$wide"
  t0=$(now_ms)
  code=$(invoke e2e-broken '{}' "$OUT/broken-again" 60)
  log "second invocation: HTTP $code after $(($(now_ms) - t0)) ms"
  if [[ $reason == InitFailed && $message == *no_such_module_e2e* && $wide == *no_such_module_e2e* && $code == 200 ]] &&
    [[ $(jq -r .errorType "$OUT/broken-again.body" 2>/dev/null) == Runtime.ImportModuleError ]] &&
    kubectl get events --field-selector involvedObject.kind=Function,involvedObject.name=e2e-broken,reason=InitFailed -o name | grep -q .; then
    pass "init failure: kubectl get fn says InitFailed (-o wide: $message), a Warning Event InitFailed was written, and the next caller got the same error"
  else
    fail "init failure: status reason '$reason' message '$message', second call HTTP $code"
  fi
  kubectl delete fn e2e-broken --wait=false >/dev/null 2>&1
}

# --- d. validation and deletion -----------------------------------------------------
check_invalid() {
  local msg
  msg=$(kubectl apply -f - 2>&1 <<'EOF'
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-invalid
spec:
  handler: app.lambda_handler
  code: {inline: "def lambda_handler(e, c): return 1"}
  scaling: {minScale: 3, maxScale: 1}
EOF
  )
  local rc=$?
  echo "  kubectl said: $msg"
  if ((rc != 0)) && [[ $msg == *"maxScale must be greater than or equal to"*"minScale"* ]] && ! kubectl get fn e2e-invalid >/dev/null 2>&1; then
    pass "invalid: maxScale < minScale refused by the API server with a clear message"
  else
    fail "invalid: expected a refusal mentioning maxScale/minScale (rc $rc)"
  fi
}

check_delete() {
  kubectl get deploy fn-hello >/dev/null 2>&1 || { fail "delete: fn-hello exists before the delete"; return 1; }
  kubectl delete fn hello --wait=true --timeout=60s || { fail "delete: kubectl delete fn hello"; return 1; }
  if wait_until 60 bash -c '! kubectl get deploy fn-hello && ! kubectl get svc fn-hello && ! kubectl get cm fn-hello-code' &&
    wait_until 60 no_pods_of hello; then
    pass "delete: deleting the Function removed its Deployment, Service, ConfigMap and pods (owner references + GC)"
  else
    kubectl get deploy,svc,cm,pods -l porchlight.dev/function=hello
    fail "delete: Deployment/pods of hello still present after 60 s"
  fi
}

# --- e. an environment killed mid-invocation --------------------------------------------
check_kill() {
  cat >"$OUT/sleepy.yaml" <<'EOF'
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-sleepy
spec:
  runtime: python3.12
  handler: app.lambda_handler
  code:
    inline: |
      import time
      def lambda_handler(event, context):
          time.sleep(event.get("sleep", 0))
          return {"slept": event.get("sleep", 0)}
  timeoutSeconds: 120
  scaling:
    # One environment only, so the one killed is the one running the call.
    minScale: 1
    maxScale: 1
EOF
  kubectl apply -f "$OUT/sleepy.yaml" || { fail "kill: apply e2e-sleepy"; return 1; }
  wait_until 30 gateway_knows e2e-sleepy || { fail "kill: gateway lists e2e-sleepy"; return 1; }
  # Warm it up (also proves minScale 1 brought a pod up).
  local code
  code=$(invoke e2e-sleepy '{}' "$OUT/sleepy-warm" 60)
  [[ $code == 200 ]] || { fail "kill: warm-up invocation (HTTP $code)"; return 1; }
  local victim
  # The long call: would take 100 s if nothing went wrong.
  invoke e2e-sleepy '{"sleep": 100}' "$OUT/sleepy-long" 115 >"$OUT/sleepy-long.code" &
  local caller=$!
  BG_PIDS="$caller"
  if ! wait_until 20 in_flight_at_least_1 e2e-sleepy; then
    fail "kill: the long invocation is in flight"; kill $caller 2>/dev/null; BG_PIDS=""; return 1
  fi
  sleep 1
  victim=$(kubectl get pods -l porchlight.dev/function=e2e-sleepy --field-selector=status.phase=Running -o name)
  if [[ $(wc -w <<<"$victim") != 1 ]]; then
    fail "kill: exactly one environment runs the call (found: ${victim:-none})"; kill $caller 2>/dev/null; BG_PIDS=""; return 1
  fi
  victim=${victim#pod/}
  log "killing environment $victim mid-invocation (kubectl delete pod --grace-period=0 --force)"
  local tk=$SECONDS
  kubectl delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
  wait "$caller"; BG_PIDS=""
  code=$(cat "$OUT/sleepy-long.code")
  local body
  body=$(cat "$OUT/sleepy-long.body" 2>/dev/null)
  log "in-flight caller got HTTP ${code:-none} $((SECONDS - tk)) s after the kill: $body"
  if [[ $code =~ ^[45][0-9][0-9]$ ]] && jq -e '.errorType and .errorMessage' "$OUT/sleepy-long.body" >/dev/null 2>&1; then
    pass "kill: the in-flight caller got a Lambda-shaped error (HTTP $code, $(jq -r .errorType "$OUT/sleepy-long.body"): $(jq -r .errorMessage "$OUT/sleepy-long.body" | cut -c1-100))"
  elif [[ $code == 200 ]] && [[ $(header "$OUT/sleepy-long" X-Amz-Function-Error) != "" ]] && jq -e '.errorType' "$OUT/sleepy-long.body" >/dev/null 2>&1; then
    pass "kill: the in-flight caller got a Lambda function error (X-Amz-Function-Error, $(jq -r .errorType "$OUT/sleepy-long.body"))"
  else
    cat "$OUT/sleepy-long.err" 2>/dev/null
    fail "kill: in-flight caller expected a Lambda-shaped error, got HTTP ${code:-none} body: $body"
  fi
  code=$(invoke e2e-sleepy '{"sleep": 0}' "$OUT/sleepy-next" 90)
  local env
  env=$(header "$OUT/sleepy-next" X-Porchlight-Environment)
  if [[ $code == 200 && $(cat "$OUT/sleepy-next.body") == *slept* && -n $env && $env != "$victim" ]]; then
    pass "kill: the next invocation succeeded on a replacement environment ($env)"
  else
    fail "kill: next invocation after the kill (HTTP $code, environment '$env', killed '$victim', body $(cat "$OUT/sleepy-next.body" 2>/dev/null))"
  fi
  kubectl delete fn e2e-sleepy --wait=false >/dev/null 2>&1
}

drain_yaml() { # drain_yaml MIN MAX
  cat <<EOF
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-drain
spec:
  runtime: python3.12
  handler: app.lambda_handler
  code:
    inline: |
      import time
      def lambda_handler(event, context):
          time.sleep(event.get("sleep", 0))
          return {"slept": event.get("sleep", 0)}
  timeoutSeconds: 40
  scaling:
    minScale: $1
    maxScale: $2
EOF
}
cost_of() { kubectl get pod "$1" -o jsonpath='{.metadata.annotations.controller\.kubernetes\.io/pod-deletion-cost}' 2>/dev/null; }
running_pods_of() { kubectl get pods -l "porchlight.dev/function=$1" --field-selector=status.phase=Running -o json 2>/dev/null | jq -r '.items[] | select(.metadata.deletionTimestamp == null) | .metadata.name'; }
pod_count_is() { [[ $(running_pods_of "$1" | grep -c .) == "$2" ]]; }
# A long invocation in flight: a scale-down removes the idle pod, and a graceful
# pod stop lets the invocation finish (the shim drains for timeout + 2 s, the
# pod's grace period is timeout + 6 s).
check_drain() {
  drain_yaml 2 2 | kubectl apply -f - >/dev/null || { fail "drain: apply e2e-drain"; return 1; }
  if ! wait_until 90 pod_count_is e2e-drain 2 || ! wait_until 30 gateway_knows e2e-drain \
    || ! wait_until 30 bash -c '[[ $(kubectl get fn e2e-drain -o jsonpath={.status.readyReplicas}) == 2 ]]'; then
    fail "drain: two ready environments ($(fn_status e2e-drain))"; return 1
  fi
  invoke e2e-drain '{"sleep": 20}' "$OUT/drain-long" 60 >"$OUT/drain-long.code" &
  BG_PIDS=$!
  if ! wait_until 20 in_flight_at_least_1 e2e-drain; then
    fail "drain: the long invocation is in flight"; kill "$BG_PIDS" 2>/dev/null; BG_PIDS=""; return 1
  fi
  log "scaling e2e-drain from 2 to 1 with one invocation in flight (pods: $(running_pods_of e2e-drain | tr '\n' ' '))"
  drain_yaml 1 1 | kubectl apply -f - >/dev/null
  wait_until 30 pod_count_is e2e-drain 1 || fail "drain: scaled down to one pod ($(running_pods_of e2e-drain | tr '\n' ' '))"
  local kept kept_cost
  kept=$(running_pods_of e2e-drain | head -1)
  kept_cost=$(cost_of "$kept")
  wait "$BG_PIDS"; BG_PIDS=""
  local code env
  code=$(cat "$OUT/drain-long.code")
  env=$(header "$OUT/drain-long" X-Porchlight-Environment)
  if [[ $code == 200 && $(jq -r .slept "$OUT/drain-long.body" 2>/dev/null) == 20 && $env == "$kept" && ${kept_cost:-0} -ge 1 ]]; then
    pass "drain: the scale-down removed the idle pod; the busy one ($kept, pod-deletion-cost $kept_cost) finished its invocation"
  else
    fail "drain: scale-down with a call in flight: HTTP ${code:-none}, ran on '$env', kept '$kept' (cost '$kept_cost'), body $(cat "$OUT/drain-long.body" 2>/dev/null)"
  fi

  invoke e2e-drain '{"sleep": 15}' "$OUT/drain-stop" 60 >"$OUT/drain-stop.code" &
  BG_PIDS=$!
  if ! wait_until 20 in_flight_at_least_1 e2e-drain; then
    fail "drain: the invocation before the stop is in flight"; kill "$BG_PIDS" 2>/dev/null; BG_PIDS=""; return 1
  fi
  sleep 1
  log "deleting pod $kept gracefully with an invocation in flight"
  local ts=$SECONDS
  kubectl delete pod "$kept" --wait=false >/dev/null
  wait "$BG_PIDS"; BG_PIDS=""
  code=$(cat "$OUT/drain-stop.code")
  if [[ $code == 200 && $(jq -r .slept "$OUT/drain-stop.body" 2>/dev/null) == 15 && -z $(header "$OUT/drain-stop" X-Amz-Function-Error) ]]; then
    pass "drain: a graceful pod stop let the in-flight invocation finish (answered $((SECONDS - ts)) s after the delete)"
  else
    fail "drain: graceful stop cut the invocation short: HTTP ${code:-none}, body $(cat "$OUT/drain-stop.body" 2>/dev/null)"
  fi
  code=$(invoke e2e-drain '{}' "$OUT/drain-next" 90)
  env=$(header "$OUT/drain-next" X-Porchlight-Environment)
  if [[ $code == 200 && -n $env && $env != "$kept" ]]; then
    pass "drain: the next invocation ran on the replacement ($env)"
  else
    fail "drain: next invocation after the graceful stop: HTTP $code on '$env'"
  fi
  kubectl delete fn e2e-drain --wait=false >/dev/null 2>&1
}

# A function reads a Secret through envValueFrom: the value reaches the
# handler, never the Function, the Deployment or the gateway's answers; an
# edit to the Secret rolls the pods.
secret_value() { [[ $(invoke e2e-secret '{}' "$OUT/secret-read" 20) == 200 && $(jq -r . "$OUT/secret-read.body" 2>/dev/null) == "$1" ]]; }
check_secret() {
  kubectl create secret generic e2e-db --from-literal=password=first-s3cret-value >/dev/null ||
    { fail "secret: create Secret e2e-db"; return 1; }
  cat >"$OUT/secret.yaml" <<'EOF'
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-secret
spec:
  runtime: python3.12
  handler: app.handler
  code:
    inline: |
      import os
      def handler(event, context):
          return os.environ.get("DB_PASSWORD", "unset")
  envValueFrom:
    DB_PASSWORD: {secretKeyRef: {name: e2e-db, key: password}}
  scaling: {minScale: 1, maxScale: 1}
EOF
  kubectl apply -f "$OUT/secret.yaml" >/dev/null || { fail "secret: apply e2e-secret"; return 1; }
  wait_until 30 gateway_knows e2e-secret || { fail "secret: gateway lists e2e-secret"; return 1; }
  if ! wait_until 90 secret_value first-s3cret-value; then
    fail "secret: the handler reads the Secret (HTTP $(cat "$OUT/secret-read.code" 2>/dev/null), body $(cat "$OUT/secret-read.body" 2>/dev/null))"; return 1
  fi
  local leaks=""
  kubectl get fn e2e-secret -o yaml | grep -q first-s3cret-value && leaks+=" Function"
  kubectl get deploy fn-e2e-secret -o yaml | grep -q first-s3cret-value && leaks+=" Deployment"
  kubectl get events -o yaml | grep -q first-s3cret-value && leaks+=" Events"
  curl -s --max-time 5 "${SIGV4[@]}" "http://$GW:8080/2015-03-31/functions/" | grep -q first-s3cret-value && leaks+=" ListFunctions"
  curl -s --max-time 5 "http://$GW:8081/v1/functions" | grep -q first-s3cret-value && leaks+=" /v1/functions"
  if [[ -n $leaks ]]; then
    fail "secret: the Secret's value shows in:$leaks"
  else
    pass "secret: a handler reads a Secret through envValueFrom; its value is in none of the Function, Deployment, Events, ListFunctions, /v1/functions"
  fi
  local before
  before=$(pods_of e2e-secret | tr '\n' ' ')
  local t0=$SECONDS
  kubectl create secret generic e2e-db --from-literal=password=second-s3cret-value --dry-run=client -o yaml |
    kubectl apply -f - >/dev/null
  if wait_until 120 secret_value second-s3cret-value; then
    pass "secret: editing the Secret rolled the pods ($before-> $(pods_of e2e-secret | tr '\n' ' ')) and the handler reads the new value after $((SECONDS - t0)) s"
  else
    fail "secret: after editing the Secret the handler still reads $(cat "$OUT/secret-read.body" 2>/dev/null) (pods before: $before, now: $(pods_of e2e-secret | tr '\n' ' '))"
  fi
  kubectl delete fn e2e-secret --wait=false >/dev/null 2>&1
  kubectl delete secret e2e-db --wait=false >/dev/null 2>&1
}

# --- k. a second namespace served by the same gateway ---------------------------
ns_yaml() { # ns_yaml NAMESPACE ANSWER
  cat <<EOF
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: e2e-ns, namespace: $1}
spec:
  runtime: python3.12
  handler: app.h
  code:
    inline: |
      def h(event, context):
          return {"answer": "$2", "function": context.function_name}
EOF
}
# A ready gateway pod's IP, once none is terminating (after a rollout);
# fails (for wait_until) while there is none.
gateway_pod_ip() {
  kubectl -n $NS get pods -l app.kubernetes.io/name=porchlight-gateway -o json |
    jq -er 'if any(.items[]; .metadata.deletionTimestamp != null) then empty else
      [.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True")) | .status.podIP] | first // empty end'
}
check_namespaces() {
  local team=e2e-team overlay="$OUT/team-overlay"
  kubectl create namespace $team >/dev/null 2>&1
  # What a Function namespace needs (the gateway's Role, the pods' NetworkPolicy),
  # applied the way the README says: an overlay that sets the namespace.
  mkdir -p "$overlay"
  printf 'namespace: %s\nresources:\n  - %s\n' $team \
    "$(realpath --relative-to="$overlay" "$ROOT/deploy/function-namespace")" >"$overlay/kustomization.yaml"
  kubectl apply -k "$overlay" >"$OUT/team-apply.log" 2>&1 || { cat "$OUT/team-apply.log"; fail "namespaces: apply the function-namespace overlay"; return 1; }
  [[ $(kubectl -n $team get rolebinding porchlight-gateway -o jsonpath='{.subjects[0].namespace}') == "$NS" ]] ||
    { fail "namespaces: the overlay's RoleBinding names the gateway's ServiceAccount in $NS"; return 1; }
  kubectl -n $NS set env deploy/porchlight-gateway PORCHLIGHT_NAMESPACES=$team >/dev/null
  if ! kubectl -n $NS rollout status deploy/porchlight-gateway --timeout=120s >"$OUT/team-rollout.log" 2>&1; then
    cat "$OUT/team-rollout.log"; fail "namespaces: the gateway rolled out serving $team"; return 1
  fi
  wait_until 60 gateway_pod_ip || { fail "namespaces: a ready gateway pod after the rollout"; return 1; }
  GW=$(gateway_pod_ip)
  wait_until 30 curl -sf --max-time 2 "http://$GW:8081/ready" || { fail "namespaces: the new gateway is ready"; return 1; }
  { ns_yaml default home | kubectl apply -f - && ns_yaml $team team | kubectl apply -f -; } >/dev/null ||
    { fail "namespaces: apply e2e-ns in default and in $team"; return 1; }
  { wait_until 30 gateway_knows $team.e2e-ns && wait_until 30 gateway_knows e2e-ns; } ||
    { fail "namespaces: the gateway lists e2e-ns and $team.e2e-ns"; return 1; }
  local home_code team_code
  home_code=$(invoke e2e-ns '{}' "$OUT/ns-home" 60)
  team_code=$(invoke $team.e2e-ns '{}' "$OUT/ns-team" 60)
  if [[ $home_code == 200 && $(jq -r .answer "$OUT/ns-home.body") == home &&
    $team_code == 200 && $(jq -r .answer "$OUT/ns-team.body") == team ]] &&
    [[ -n $(kubectl -n $team get pods -l porchlight.dev/function=e2e-ns -o name) ]]; then
    pass "namespaces: one gateway serves default and $team (its Role there from an overlay of deploy/function-namespace); e2e-ns answers 'home', $team.e2e-ns answers 'team' from a pod in $team"
  else
    fail "namespaces: e2e-ns -> $home_code $(cat "$OUT/ns-home.body" 2>/dev/null), $team.e2e-ns -> $team_code $(cat "$OUT/ns-team.body" 2>/dev/null)"
  fi
  kubectl delete fn e2e-ns --wait=false >/dev/null 2>&1
  kubectl -n $team delete fn e2e-ns --wait=false >/dev/null 2>&1
}

# --- l. HTTPS on the public port, certificate from a Secret ------------------------
check_tls() {
  local host=porchlight-gateway.$NS.svc dir="$OUT/tls"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log"; fail "tls: openssl made a certificate"; return 1; }
  kubectl -n $NS create secret tls porchlight-gateway-tls --cert="$dir/tls.crt" --key="$dir/tls.key" >/dev/null &&
    kubectl -n $NS patch deploy porchlight-gateway --patch-file "$ROOT/deploy/tls-patch.yaml" >/dev/null ||
    { fail "tls: create the Secret and apply deploy/tls-patch.yaml"; return 1; }
  if ! kubectl -n $NS rollout status deploy/porchlight-gateway --timeout=120s >"$dir/rollout.log" 2>&1; then
    cat "$dir/rollout.log"; fail "tls: the gateway rolled out with the certificate"; return 1
  fi
  wait_until 60 gateway_pod_ip || { fail "tls: a ready gateway pod after the rollout"; return 1; }
  GW=$(gateway_pod_ip)
  wait_until 30 curl -sf --max-time 2 "http://$GW:8081/ready" || { fail "tls: the new gateway is ready (internal port, plain HTTP)"; return 1; }
  # The pod's IP only: --resolve pins the certificate's name to it.
  local https=(--cacert "$dir/tls.crt" --resolve "$host:8080:$GW")
  local code plain
  code=$(curl -sS "${https[@]}" "${SIGV4[@]}" -o "$dir/list.json" -w '%{http_code}' --max-time 10 "https://$host:8080/2015-03-31/functions/" 2>"$dir/curl.err")
  plain=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$GW:8080/2015-03-31/functions/")
  if [[ $code == 200 && $plain != 200 && $plain != 403 ]]; then
    pass "tls: signed ListFunctions over HTTPS with the certificate from Secret porchlight-gateway-tls (deploy/tls-patch.yaml); plain HTTP on the public port gets no answer (HTTP $plain)"
  else
    fail "tls: HTTPS -> $code ($(cat "$dir/curl.err")), plain HTTP -> $plain"
  fi
}

# --- m. async events in NATS survive a gateway pod deletion ---------------------
# nats_ip: the NATS pod's IP (the test talks to pods on its own bridge only).
nats_ip() { kubectl -n $NS get pod porchlight-nats-0 -o jsonpath='{.status.podIP}' 2>/dev/null; }
# gateways_on_nats N: N gateway connections on the NATS server (its monitoring port).
gateways_on_nats() {
  [[ $(curl -sf --max-time 2 "http://$NATS:8222/connz" |
    jq '[.connections[] | select(.name == "porchlight-gateway")] | length') == "$1" ]]
}
# fn_log_lines FUNCTION PATTERN FILE: adds the matching lines of every pod of
# FUNCTION to FILE (kept across polls: a pod scaled down takes its log along).
fn_log_lines() {
  local pod
  for pod in $(pods_of "$1"); do
    kubectl logs "$pod" --tail=-1 2>/dev/null | grep -o "$2" >>"$3"
  done
  sort -u -o "$3" "$3"
}
async_yaml() {
  cat <<YAML
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-async
spec:
  runtime: python3.12
  handler: app.h
  code:
    inline: |
      import time
      def h(event, context):
          time.sleep(event["sleep"])
          print("e2e-async ran", event["n"], context.aws_request_id, flush=True)
          return event
  timeoutSeconds: 30
  scaling: {minScale: 1, maxScale: 1}
YAML
}
check_durable() {
  local n=12 accepted=0 i code pod ran="$OUT/async-ran.txt"
  async_yaml | kubectl apply -f - >/dev/null || { fail "durable: apply e2e-async"; return 1; }
  { wait_until 120 bash -c "[[ \$(kubectl get fn e2e-async -o jsonpath='{.status.readyReplicas}') == 1 ]]" &&
    wait_until 30 gateway_knows e2e-async; } ||
    { fail "durable: e2e-async ready (minScale 1)"; return 1; }
  pod=$(kubectl -n $NS get pods -l app.kubernetes.io/name=porchlight-gateway -o json |
    jq -r --arg ip "$GW" '.items[] | select(.status.podIP == $ip) | .metadata.name')
  for ((i = 0; i < n; i++)); do
    code=$(curl -sS --max-time 10 "${SIGV4[@]}" -o /dev/null -w '%{http_code}' -H 'X-Amz-Invocation-Type: Event' \
      --data "{\"n\": $i, \"sleep\": 2}" "http://$GW:8080/2015-03-31/functions/e2e-async/invocations" 2>/dev/null)
    [[ $code == 202 ]] && accepted=$((accepted + 1))
  done
  # The gateway that accepted them goes away at once (1 s grace), running one of them.
  wait_until 10 in_flight_at_least_1 e2e-async
  kubectl -n $NS delete pod "$pod" --grace-period=1 --wait=false >/dev/null ||
    { fail "durable: delete the gateway pod $pod"; return 1; }
  local t0=$SECONDS
  : >"$ran"
  local done_=0
  for ((i = 0; i < 360 && done_ == 0; i++)); do
    fn_log_lines e2e-async 'e2e-async ran [0-9]* [-0-9a-f]*' "$ran"
    [[ $(cut -d' ' -f3 "$ran" | sort -un | wc -l) -ge $n ]] && done_=1 || sleep 0.5
  done
  local distinct runs
  distinct=$(cut -d' ' -f3 "$ran" | sort -un | wc -l)
  # Runs per event: its request id is stable across retries, so a repeat shows
  # as the same n with the same id printed again by another attempt.
  runs=$(kubectl logs -l porchlight.dev/function=e2e-async --tail=-1 2>/dev/null | grep -o 'e2e-async ran [0-9]*' | wc -l)
  if kubectl -n $NS rollout status deploy/porchlight-gateway --timeout=120s >"$OUT/durable-rollout.log" 2>&1 &&
    wait_until 60 gateway_pod_ip; then
    GW=$(gateway_pod_ip)
    wait_until 30 curl -sf --max-time 2 "http://$GW:8081/ready" || true
  fi
  if ((accepted == n && distinct == n && runs >= n && runs - n <= 1)); then
    pass "durable: $n async events accepted (202) by gateway $pod, which was deleted while running one; all $n ran, by the other gateway and the new one, within $((SECONDS - t0)) s; run twice: $((runs - n)) (at most the one it was running)"
  else
    fail "durable: accepted $accepted/$n, ran $distinct distinct of $n, $runs runs in all ($(tr '\n' ';' <"$ran"))"
  fi
  kubectl delete fn e2e-async --wait=false >/dev/null 2>&1
}

# --- n. a queue-triggered function scales with its backlog -----------------------
queue_yaml() {
  cat <<YAML
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata:
  name: e2e-queue
spec:
  runtime: python3.12
  handler: app.h
  code:
    inline: |
      import time
      def h(event, context):
          for record in event["Records"]:
              time.sleep(1)
              print("e2e-queue job", record["body"], flush=True)
          return {"batchItemFailures": []}
  timeoutSeconds: 30
  scaling: {maxScale: 3}
  triggers:
    - queue: {subject: e2e.jobs, batchSize: 1, maximumConcurrency: 3}
YAML
}
# publish HOST SUBJECT N: N messages ("0".."N-1") over NATS's own protocol,
# each acknowledged by JetStream (stored) before this returns.
publish() {
  python3 - "$@" <<'PY'
import socket, sys
host, subject, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, 4222), timeout=20)
f = s.makefile("rb")
if not f.readline().startswith(b"INFO"):
    sys.exit("no INFO from NATS")
s.sendall(b'CONNECT {"verbose":false,"name":"e2e"}\r\nSUB _INBOX.e2e 1\r\n')
for i in range(n):
    body = str(i).encode()
    s.sendall(b"PUB %s _INBOX.e2e %d\r\n%s\r\n" % (subject.encode(), len(body), body))
acks = 0
while acks < n:
    line = f.readline()
    if not line:
        sys.exit("NATS closed the connection")
    if line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith(b"-ERR"):
        sys.exit(line.decode())
    elif line.startswith(b"MSG"):
        payload = f.read(int(line.split()[-1]) + 2)
        if b'"seq"' not in payload:
            sys.exit("not stored: " + payload.decode())
        acks += 1
print(acks)
PY
}
stream_exists() {
  curl -sf --max-time 2 "http://$NATS:8222/jsz?streams=true" |
    jq -e --arg s "$1" '[.. | objects | select(.name? == $s)] | length > 0'
}
check_queue() {
  local n=30 jobs="$OUT/queue-jobs.txt" most=0 pods i
  queue_yaml | kubectl apply -f - >/dev/null || { fail "queue: apply e2e-queue"; return 1; }
  wait_until 60 stream_exists PORCHLIGHT_Q_e2e_jobs ||
    { fail "queue: the gateways made the stream PORCHLIGHT_Q_e2e_jobs over e2e.jobs"; return 1; }
  no_pods_of e2e-queue || { fail "queue: e2e-queue starts at zero"; return 1; }
  local stored
  stored=$(publish "$NATS" e2e.jobs $n 2>"$OUT/publish.err") ||
    { cat "$OUT/publish.err"; fail "queue: publish $n messages to e2e.jobs"; return 1; }
  local t0=$SECONDS
  : >"$jobs"
  for ((i = 0; i < 360; i++)); do
    pods=$(running_pods_of e2e-queue | grep -c .)
    ((pods > most)) && most=$pods
    fn_log_lines e2e-queue 'e2e-queue job [0-9]*' "$jobs"
    [[ $(wc -l <"$jobs") -ge $n ]] && break
    sleep 0.5
  done
  local done_
  done_=$(wc -l <"$jobs")
  if ((stored == n && done_ == n && most >= 2)); then
    pass "queue: $n messages published with NATS's protocol (each stored by JetStream) ran as SQS-shaped batches in $((SECONDS - t0)) s; the backlog scaled e2e-queue from zero to $most environments (maxScale 3)"
  else
    fail "queue: $stored stored, $done_ of $n ran, at most $most environments (want >= 2)"
  fi
  kubectl delete fn e2e-queue --wait=false >/dev/null 2>&1
}

COLD_MS=""
# E2E_ONLY="drain kill" runs only those checks (after install).
if check_install; then
  for check in ${E2E_ONLY:-hello node scale update init_failure invalid delete kill drain durable queue secret namespaces tls}; do
    "check_$check"
  done
else
  check_invalid
fi
if [[ -n $COLD_MS ]]; then log "scale from zero (first event -> response, real pod): ${COLD_MS} ms"; fi
