#!/usr/bin/env bash
# Smoke test of the local cluster. Expects a running control plane (control-plane.sh up);
# with --node also a Ready node (node.sh up).
#
#   tests/cluster/smoke.sh           # CRD + Deployment -> ReplicaSet -> Pods (Pending without a node);
#                                    # ownerReference garbage collection on delete
#   tests/cluster/smoke.sh --node    # + the pods run on the node and answer HTTP on their pod IPs
set -euo pipefail
LOG_TAG=smoke
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
k() { kubectl_admin "$@"; }
NS=smoke-$$
WITH_NODE=0; [[ ${1:-} == --node ]] && WITH_NODE=1
trap 'k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true' EXIT

k version
k create namespace "$NS"
wait_for "default service account in $NS" 60 "" k -n "$NS" get serviceaccount default

k apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.porchlight.dev}
spec:
  group: smoke.porchlight.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties: {size: {type: integer, minimum: 1}}
EOF
k wait --for=condition=Established crd/widgets.smoke.porchlight.dev --timeout=30s
k -n "$NS" apply -f - <<'EOF'
apiVersion: smoke.porchlight.dev/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
EOF
k -n "$NS" get widgets
out=$(k -n "$NS" apply -f - 2>&1 <<'EOF' || true
apiVersion: smoke.porchlight.dev/v1
kind: Widget
metadata: {name: bad}
spec: {size: 0}
EOF
)
echo "$out"
[[ $out == *"should be greater than or equal to 1"* ]] || die "invalid Widget was not refused"
log "invalid Widget refused by schema validation: OK"

k -n "$NS" apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: localhost/porchlight/busybox:1
        imagePullPolicy: Never
        command: [httpd, -f, -p, "8080", -h, /www]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
EOF
wait_for "ReplicaSet of deployment/web" 60 "" bash -c "[[ -n \$($K8S_BIN/kubectl --kubeconfig $CLUSTER_DIR/admin.kubeconfig -n $NS get rs -l app=web -o name) ]]"
wait_for "2 pods of deployment/web" 60 "" bash -c "(( \$($K8S_BIN/kubectl --kubeconfig $CLUSTER_DIR/admin.kubeconfig -n $NS get pods -l app=web -o name | wc -l) == 2 ))"
k -n "$NS" get deploy,rs,pods -o wide

if ((WITH_NODE)); then
  k -n "$NS" rollout status deploy/web --timeout=120s
  k -n "$NS" get pods -o wide
  for ip in $(k -n "$NS" get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
    body=$(curl -fsS --max-time 5 "http://$ip:8080/")
    log "GET http://$ip:8080/ -> $body"
  done
  pod=$(k -n "$NS" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
  k -n "$NS" logs "$pod" || die "kubectl logs failed"
  k -n "$NS" exec "$pod" -- ip -4 addr show eth0 || die "kubectl exec failed"
  # ClusterIP Service (kube-proxy) from the host and from a pod behind it (hairpin).
  k -n "$NS" expose deploy web --port=80 --target-port=8080
  cip=$(k -n "$NS" get svc web -o jsonpath='{.spec.clusterIP}')
  wait_for "Service web ($cip) answering from the host" 30 "" curl -fsS --max-time 2 "http://$cip/"
  log "GET http://$cip/ (ClusterIP, host) -> $(curl -fsS --max-time 5 "http://$cip/")"
  body=$(k -n "$NS" exec "$pod" -- wget -q -O- "http://$cip/") || die "pod cannot reach Service web"
  log "GET http://$cip/ (ClusterIP, from a pod) -> $body"
  # In-cluster clients use KUBERNETES_SERVICE_HOST:PORT (the kubernetes Service IP).
  ver=$(k -n "$NS" exec "$pod" -- sh -c \
    'wget -q -O- --no-check-certificate "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"') ||
    die "pod cannot reach the API server through the kubernetes Service IP"
  log "pod -> https://\$KUBERNETES_SERVICE_HOST/version: $(tr -d ' \n' <<<"$ver" | cut -c1-60)"
fi

# Garbage collection through ownerReferences: deleting the Deployment removes RS and pods.
k -n "$NS" delete svc web --ignore-not-found
k -n "$NS" delete deploy web --wait=false
wait_for "ReplicaSets and Pods garbage-collected" 90 "" bash -c \
  "[[ -z \$($K8S_BIN/kubectl --kubeconfig $CLUSTER_DIR/admin.kubeconfig -n $NS get rs,pods -l app=web -o name) ]]"
k delete crd widgets.smoke.porchlight.dev
log "smoke test passed"
