#!/usr/bin/env bash
# Porchlight on kind, for users with Docker: build the images, load them into
# the cluster, install the platform and the examples.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-porchlight}

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config deploy/kind/cluster.yaml
docker build -f deploy/Dockerfile.controller -t porchlight/controller:dev .
docker build -f deploy/Dockerfile.gateway -t porchlight/gateway:dev .
docker build -f deploy/Dockerfile.nats -t porchlight/nats:dev .
docker build -f runtime-image/Dockerfile -t porchlight/runtime-python:dev .
docker build -f runtime-image/Dockerfile.node -t porchlight/runtime-node:dev .
for image in porchlight/controller:dev porchlight/gateway:dev porchlight/nats:dev porchlight/runtime-python:dev porchlight/runtime-node:dev; do
  kind load docker-image --name "$CLUSTER" "$image"
done
kubectl create namespace porchlight-system 2>/dev/null || true
eval "$(deploy/new-key.sh)" # the Lambda API is signed; porchlight-load signs with this key
kubectl apply -k deploy/
kubectl wait --for=condition=Established crd/functions.porchlight.dev --timeout=60s
kubectl -n porchlight-system rollout status statefulset/porchlight-nats --timeout=180s
kubectl -n porchlight-system rollout status deploy/porchlight-controller --timeout=180s
kubectl -n porchlight-system rollout status deploy/porchlight-gateway --timeout=180s
kubectl apply -f examples/
kubectl get fn -A

# A short scale test through the gateway (0 -> 50 -> 0 callers on hello),
# port-forwarded to loopback; the report lands in target/scale-report-kind/.
kubectl -n porchlight-system port-forward svc/porchlight-gateway 8080:8080 >/dev/null &
forward=$!
trap 'kill $forward 2>/dev/null' EXIT
for _ in $(seq 50); do curl -s -o /dev/null localhost:8080/ && break; sleep 0.2; done
cargo run --release -q -p porchlight-load -- --target http://127.0.0.1:8080 --function hello \
  --concurrency 0:5s,50:30s,0:5s --observe-after 120s --out target/scale-report-kind \
  --scale-source kubernetes --namespace default # the gateway's /v1/functions is on its internal port
echo "Scale-test report: target/scale-report-kind (summary.json, latency.png, environments.png)"
