#!/usr/bin/env bash
# The controller at scale: N Functions applied at once on the real control plane
# (tests/cluster, no node), timed until every one reports its steady status.
#
#   nice -n 10 tests/load/controller-scale.sh [N]        # N defaults to 1000
#
# What it does:
#   1. builds target/release/porchlight-controller (nice -n 10; skip with SKIP_BUILD=1),
#   2. starts its own control plane (no node, loopback only) in
#      PORCHLIGHT_CLUSTER_DIR (default /tmp/porchlight-scale-cluster, never the default
#      cluster dir of tests/cluster) and installs deploy/crd.yaml,
#   3. runs the controller as a plain process (--leader-election false, --listen
#      127.0.0.1:0, no --gateway-url: it discovers gateway pods in porchlight-system,
#      and there are none),
#   4. creates N Functions (minScale 0, inline code) in namespace `scale`, with
#      `kubectl create` on APPLY_JOBS (default 4) chunks in parallel,
#   5. polls once a second until all N Functions report Ready=True/ScaledToZero
#      (bounded by SCALE_TIMEOUT, default 300 s + N/10 s; past it the summary is still
#      written, with what was reached, and the script exits 1), recording how many Functions
#      and Deployments exist, the controller's RSS and CPU and the API server's RSS,
#   6. keeps sampling SETTLE seconds (default 30) to see the idle cost, then checks every
#      Function once more with jq (condition, observedGeneration, desiredReplicas) and
#      scrapes the controller's /metrics.
#
# "Ready" here: the Ready condition is True with reason ScaledToZero. That is the steady
# status of a Function with minScale 0 and no demand (controller/src/reconcile.rs: no
# ready environment, desired 0 and 0 replicas); it is only written after the controller
# has applied the ConfigMap, the Deployment (created with 0 replicas) and the Service.
# The final jq check also wants observedGeneration == metadata.generation.
#
# Output in OUT_DIR (default /tmp/porchlight-controller-scale-N): summary.txt (also
# printed), samples.csv (one row per poll), controller.log (JSON lines), warnings.txt (the
# controller's WARN/ERROR messages, counted), metrics.txt, functions.yaml, the cluster's logs.
# Teardown (trap): the controller is stopped by its pid, then `control-plane.sh down`
# with this script's cluster dir.
set -euo pipefail

N=${1:-1000}
[[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "usage: $0 [N]" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PORCHLIGHT_CLUSTER_DIR=${PORCHLIGHT_CLUSTER_DIR:-/tmp/porchlight-scale-cluster}
[[ $PORCHLIGHT_CLUSTER_DIR != "${TMPDIR:-/tmp}/porchlight-cluster" ]] ||
  { echo "refusing the default cluster dir $PORCHLIGHT_CLUSTER_DIR" >&2; exit 2; }
OUT_DIR=${OUT_DIR:-/tmp/porchlight-controller-scale-$N}
APPLY_JOBS=${APPLY_JOBS:-4}
SCALE_TIMEOUT=${SCALE_TIMEOUT:-$((300 + N / 10))}
SETTLE=${SETTLE:-30}
NS=scale
CP=$ROOT/tests/cluster/control-plane.sh
CONTROLLER=${CONTROLLER_BIN:-$ROOT/target/release/porchlight-controller}
K8S_BIN=${K8S_BIN:-${PORCHLIGHT_CACHE:-/root/.cache/porchlight}/k8s/${K8S_VERSION:-1.34.4}/bin}
KUBECONFIG=$PORCHLIGHT_CLUSTER_DIR/admin.kubeconfig
export KUBECONFIG
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[controller-scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
k() { timeout 120 "$K8S_BIN/kubectl" --request-timeout=60s "$@"; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

command -v jq >/dev/null || die "jq is needed"
[[ -x $K8S_BIN/kubectl ]] || die "$K8S_BIN/kubectl missing: run tests/cluster/build.sh"

CTRL_PID='' CP_UP=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $CTRL_PID ]] && kill -0 "$CTRL_PID" 2>/dev/null; then
    kill -TERM "$CTRL_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$CTRL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CTRL_PID" 2>/dev/null || true
    wait "$CTRL_PID" 2>/dev/null || true
  fi
  if ((CP_UP)); then
    cp "$PORCHLIGHT_CLUSTER_DIR"/logs/*.log "$OUT_DIR/" 2>/dev/null || true
    PORCHLIGHT_CLUSTER_DIR=$PORCHLIGHT_CLUSTER_DIR "$CP" down >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"

if [[ -z ${SKIP_BUILD:-} && -z ${CONTROLLER_BIN:-} ]]; then
  log "building porchlight-controller (release)"
  (cd "$ROOT" && nice -n 10 cargo build --release -q -p porchlight-controller)
fi
[[ -x $CONTROLLER ]] || die "$CONTROLLER missing"

# The manifests first, so generating them is not timed.
{
  for ((i = 1; i <= N; i++)); do
    printf -- '---\napiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata:\n  name: f%05d\n  namespace: %s\nspec:\n  runtime: python3.12\n  handler: app.lambda_handler\n  code:\n    inline: |\n      def lambda_handler(event, context):\n          return {"statusCode": 200, "body": "f%05d"}\n  scaling:\n    minScale: 0\n    maxScale: 10\n' "$i" "$NS" "$i"
  done
} >"$OUT_DIR/functions.yaml"
# APPLY_JOBS files of consecutive documents.
per=$(((N + APPLY_JOBS - 1) / APPLY_JOBS))
awk -v per="$per" -v dir="$OUT_DIR" '/^---$/ { n++ } { print > (dir "/chunk-" int((n - 1) / per) ".yaml") }' \
  "$OUT_DIR/functions.yaml"

log "starting the control plane in $PORCHLIGHT_CLUSTER_DIR (no node)"
CP_UP=1
"$CP" up
API_PID=$(cat "$PORCHLIGHT_CLUSTER_DIR/pids/kube-apiserver.pid")
ETCD_PID=$(cat "$PORCHLIGHT_CLUSTER_DIR/pids/etcd.pid")
k apply -f "$ROOT/deploy/crd.yaml" >/dev/null
k wait --for=condition=Established --timeout=60s crd/functions.porchlight.dev >/dev/null
k create namespace "$NS" >/dev/null

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# utime + stime in seconds (fields 14 and 15; the command name may hold spaces).
cpu_s() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  awk -v t="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / t }' <<<"$s"
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

log "starting the controller"
RUST_LOG=${RUST_LOG:-info,kube=warn} "$CONTROLLER" --kubeconfig "$KUBECONFIG" \
  --leader-election false --listen 127.0.0.1:0 --log-format json >"$OUT_DIR/controller.log" 2>&1 </dev/null &
CTRL_PID=$!
for ((i = 0; i < 300; i++)); do
  grep -q 'function cache synced' "$OUT_DIR/controller.log" && break
  kill -0 "$CTRL_PID" 2>/dev/null || { cat "$OUT_DIR/controller.log" >&2; die "controller exited"; }
  sleep 0.1
done
grep -q 'function cache synced' "$OUT_DIR/controller.log" || die "controller not synced after 30 s"
OPS=$(jq -r 'select(.fields.addr) | .fields.addr' "$OUT_DIR/controller.log" | head -1)
sleep 2
IDLE_RSS=$(rss_kb "$CTRL_PID") IDLE_CPU=$(cpu_s "$CTRL_PID") API_RSS0=$(rss_kb "$API_PID")
log "controller pid $CTRL_PID, ops $OPS, idle RSS $(mb "$IDLE_RSS") MiB"

echo 't_s,functions,ready,deployments,controller_rss_kb,controller_cpu_s,apiserver_rss_kb,etcd_rss_kb' \
  >"$OUT_DIR/samples.csv"
# Server-side tables (the CRD's printer columns): far lighter than -o json for 10,000 objects.
count_ready() { k -n "$NS" get fn --no-headers 2>/dev/null | awk '{ n++ } $3 == "True" && $4 == "ScaledToZero" { r++ } END { printf "%d %d", n, r }'; }
count_deploy() { k -n "$NS" get deploy --no-headers 2>/dev/null | wc -l; }
T_DEPLOY='' T_READY='' APPLY_S='' TIMED_OUT=0
sample() { # sample T0 -> globals FNS READY DEPS, a row in samples.csv
  local t
  read -r FNS READY < <(count_ready) || true
  DEPS=$(count_deploy) || DEPS=0
  t=$(elapsed "$1" "$(now)")
  echo "$t,${FNS:-0},${READY:-0},$DEPS,$(rss_kb "$CTRL_PID"),$(cpu_s "$CTRL_PID"),$(rss_kb "$API_PID"),$(rss_kb "$ETCD_PID")" \
    >>"$OUT_DIR/samples.csv"
  [[ -z $T_DEPLOY && $DEPS -ge $N ]] && T_DEPLOY=$t
  [[ -z $T_READY && ${READY:-0} -ge $N ]] && T_READY=$t
  return 0
}

log "creating $N Functions ($APPLY_JOBS parallel kubectl create)"
T0=$(now)
(
  for f in "$OUT_DIR"/chunk-*.yaml; do
    timeout "$SCALE_TIMEOUT" "$K8S_BIN/kubectl" create -f "$f" >/dev/null 2>>"$OUT_DIR/apply.err" &
  done
  wait
) &
APPLY_PID=$!
APPLY_DONE=0
while :; do
  if ((!APPLY_DONE)) && ! kill -0 "$APPLY_PID" 2>/dev/null; then
    wait "$APPLY_PID" || die "kubectl create failed: $(head -3 "$OUT_DIR/apply.err")"
    APPLY_DONE=1 APPLY_S=$(elapsed "$T0" "$(now)")
    log "created in ${APPLY_S}s"
  fi
  sample "$T0"
  log "t=$(elapsed "$T0" "$(now)")s functions=$FNS ready=$READY deployments=$DEPS controller=$(mb "$(rss_kb "$CTRL_PID")") MiB"
  ((APPLY_DONE)) && [[ -n $T_READY && -n $T_DEPLOY ]] && break
  kill -0 "$CTRL_PID" 2>/dev/null || die "the controller exited (see $OUT_DIR/controller.log)"
  if awk -v a="$T0" -v b="$(now)" -v m="$SCALE_TIMEOUT" 'BEGIN { exit !(b - a > m) }'; then
    # Still report what was reached: the summary says "not reached" and the script fails.
    TIMED_OUT=1 AT_TIMEOUT="$READY of $N ready, $DEPS Deployments after $(elapsed "$T0" "$(now)") s"
    log "timed out after ${SCALE_TIMEOUT}s: $AT_TIMEOUT"
    break
  fi
  sleep 1
done
READY_CPU=$(cpu_s "$CTRL_PID") READY_RSS=$(rss_kb "$CTRL_PID")
if ((TIMED_OUT)); then
  SETTLE=0
  T_READY="not reached ($AT_TIMEOUT)" T_DEPLOY=${T_DEPLOY:+$T_DEPLOY s}
  T_DEPLOY=${T_DEPLOY:-not reached}
else
  log "all $N ready after ${T_READY}s; settling ${SETTLE}s"
  T_READY="$T_READY s" T_DEPLOY="$T_DEPLOY s"
fi
T_SETTLE=$(now)
while awk -v a="$T_SETTLE" -v b="$(now)" -v m="$SETTLE" 'BEGIN { exit !(b - a < m) }'; do
  sleep 2
  sample "$T0"
done
SETTLE_S=$(elapsed "$T_SETTLE" "$(now)")
END_CPU=$(cpu_s "$CTRL_PID") END_RSS=$(rss_kb "$CTRL_PID") PEAK=$(hwm_kb "$CTRL_PID")
API_RSS=$(rss_kb "$API_PID") API_PEAK=$(hwm_kb "$API_PID") ETCD_PEAK=$(hwm_kb "$ETCD_PID")

# One full check of every Function, and the controller's own counters.
BAD=$(k -n "$NS" get fn -o json | jq '[.items[] | select(
    ((.status.conditions // []) | map(select(.type == "Ready" and .status == "True" and .reason == "ScaledToZero")) | length) != 1
    or .status.observedGeneration != .metadata.generation
    or .status.desiredReplicas != 0)] | length')
curl -fsS --max-time 10 "http://$OPS/metrics" >"$OUT_DIR/metrics.txt" || true
metric() { awk -v m="$1" '$1 == m { s += $2 } END { printf "%d", s }' "$OUT_DIR/metrics.txt"; }
metric_sum() { awk -v m="$1" 'index($1, m) == 1 { s += $2 } END { printf "%d", s }' "$OUT_DIR/metrics.txt"; }
RECONCILES=$(metric porchlight_controller_reconciles_total)
RECONCILE_ERRORS=$(metric_sum porchlight_controller_reconcile_errors_total)
SCALES=$(metric_sum porchlight_autoscaler_scale_decisions_total)
SCALE_ERRORS=$(metric porchlight_autoscaler_scale_errors_total)
WARNS=$(grep -c '"level":"WARN"' "$OUT_DIR/controller.log" || true)
ERRORS=$(grep -c '"level":"ERROR"' "$OUT_DIR/controller.log" || true)
jq -r 'select(.level == "WARN" or .level == "ERROR") | "\(.level) \(.fields.message) \(.fields.error // "")"' \
  "$OUT_DIR/controller.log" | sed -E 's/fn-f[0-9]+/fn-fNNNNN/g; s/f[0-9]{5}/fNNNNN/g' | sort | uniq -c | sort -rn >"$OUT_DIR/warnings.txt" || true
EVENTS=$(k -n "$NS" get events --no-headers 2>/dev/null | wc -l)
PEAK_RATE=$(awk -F, 'NR > 2 && $1 > pt { r = ($3 - pr) / ($1 - pt); if (r > m) m = r } NR > 1 { pt = $1; pr = $3 } END { printf "%.0f", m }' "$OUT_DIR/samples.csv")

per_fn() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }'; }
{
  echo "porchlight-controller with $N Functions (minScale 0) on the local control plane, no node"
  echo "host: $(nproc) cores, load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '| %-52s | %s |\n' "measure" "value"
  printf '| %-52s | %s |\n' "---" "---"
  printf '| %-52s | %s |\n' "kubectl create, $APPLY_JOBS parallel chunks" "${APPLY_S} s"
  printf '| %-52s | %s |\n' "all $N Deployments exist" "$T_DEPLOY"
  printf '| %-52s | %s |\n' "all $N Functions Ready/ScaledToZero" "$T_READY"
  printf '| %-52s | %s |\n' "peak rate (Functions turning ready per second)" "$PEAK_RATE"
  printf '| %-52s | %s |\n' "Functions failing the final jq check" "$BAD"
  printf '| %-52s | %s |\n' "controller RSS idle (0 Functions)" "$(mb "$IDLE_RSS") MiB"
  printf '| %-52s | %s |\n' "controller RSS when all ready / after ${SETTLE_S} s settle" "$(mb "$READY_RSS") / $(mb "$END_RSS") MiB"
  printf '| %-52s | %s |\n' "controller peak RSS (VmHWM)" "$(mb "$PEAK") MiB"
  printf '| %-52s | %s |\n' "per Function: (settled - idle) / N, (peak - idle) / N" "$(per_fn "$IDLE_RSS" "$END_RSS") KiB, $(per_fn "$IDLE_RSS" "$PEAK") KiB"
  printf '| %-52s | %s |\n' "controller CPU until all ready (user+sys)" "$(awk -v a="$IDLE_CPU" -v b="$READY_CPU" 'BEGIN { printf "%.1f", b - a }') s"
  printf '| %-52s | %s |\n' "controller CPU while settled" "$(awk -v a="$READY_CPU" -v b="$END_CPU" -v t="$SETTLE_S" 'BEGIN { if (t > 0) printf "%.2f s in %s s (%.1f%% of a core)", b - a, t, 100 * (b - a) / t; else print "-" }')"
  printf '| %-52s | %s |\n' "reconciles / reconcile errors" "$RECONCILES / $RECONCILE_ERRORS"
  printf '| %-52s | %s |\n' "autoscaler scale decisions applied / failed" "$SCALES / $SCALE_ERRORS"
  printf '| %-52s | %s |\n' "controller log lines WARN / ERROR" "$WARNS / $ERRORS"
  printf '| %-52s | %s |\n' "Events in namespace $NS" "$EVENTS"
  printf '| %-52s | %s |\n' "kube-apiserver RSS before / after, peak" "$(mb "$API_RSS0") / $(mb "$API_RSS") MiB, $(mb "$API_PEAK") MiB"
  printf '| %-52s | %s |\n' "etcd peak RSS" "$(mb "$ETCD_PEAK") MiB"
} | tee "$OUT_DIR/summary.txt"
log "report in $OUT_DIR"
((!TIMED_OUT)) || die "not all $N Functions ready after ${SCALE_TIMEOUT}s"
[[ $BAD == 0 ]] || die "$BAD Functions did not reach the expected status"
