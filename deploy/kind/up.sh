#!/usr/bin/env bash
# Porchlight on kind, for users with Docker: build the images, load them into
# the cluster, install the platform and the examples.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-porchlight}

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config deploy/kind/cluster.yaml
docker build -f deploy/Dockerfile.controller -t porchlight/controller:dev .
docker build -f deploy/Dockerfile.gateway -t porchlight/gateway:dev .
docker build -f runtime-image/Dockerfile -t porchlight/runtime-python:dev .
for image in porchlight/controller:dev porchlight/gateway:dev porchlight/runtime-python:dev; do
  kind load docker-image --name "$CLUSTER" "$image"
done
kubectl apply -k deploy/
kubectl wait --for=condition=Established crd/functions.porchlight.dev --timeout=60s
kubectl -n porchlight-system rollout status deploy/porchlight-controller --timeout=180s
kubectl -n porchlight-system rollout status deploy/porchlight-gateway --timeout=180s
kubectl apply -f examples/
kubectl get fn -A
echo "Invoke: kubectl -n porchlight-system port-forward svc/porchlight-gateway 8080 &"
echo "        curl -s -X POST localhost:8080/2015-03-31/functions/hello/invocations -d '{}'"
