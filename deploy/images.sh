#!/usr/bin/env bash
# Builds every image the platform uses (deploy/images.txt) and pushes it to
# a registry you name, then prints how to install with those images:
#
#   REGISTRY=registry.example.com/team TAG=v0.1.0 deploy/images.sh
#
# REGISTRY  where to push: REGISTRY/NAME:TAG (required)
# TAG       the images' tag (default: dev)
# CONTAINER_TOOL  docker or podman (default: docker if found, else podman)
#
# Log in to the registry first (`docker login`, `podman login`). The images
# compile the binaries in a Rust builder image; the Dockerfiles say how to
# give them prebuilt binaries instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -z "${REGISTRY:-}" ]; then
  echo "images.sh: set REGISTRY to the registry to push to, e.g. REGISTRY=registry.example.com/team TAG=v0.1.0 deploy/images.sh" >&2
  exit 2
fi
registry=${REGISTRY%/}
tag=${TAG:-dev}

if [ -n "${CONTAINER_TOOL:-}" ]; then
  tool=$CONTAINER_TOOL
  command -v "$tool" >/dev/null || { echo "images.sh: CONTAINER_TOOL=$tool is not in PATH" >&2; exit 2; }
elif command -v docker >/dev/null; then
  tool=docker
elif command -v podman >/dev/null; then
  tool=podman
else
  echo "images.sh: neither docker nor podman is in PATH (or set CONTAINER_TOOL)" >&2
  exit 2
fi

names=()
dockerfiles=()
while read -r name dockerfile; do
  case $name in '' | '#'*) continue ;; esac
  names+=("$name")
  dockerfiles+=("$dockerfile")
done <"$root/deploy/images.txt"

count=${#names[@]}
for i in "${!names[@]}"; do
  ref="$registry/${names[$i]}:$tag"
  echo "==> [$((i + 1))/$count] $tool build -f ${dockerfiles[$i]} -t $ref"
  "$tool" build -f "$root/${dockerfiles[$i]}" -t "$ref" "$root"
  echo "==> [$((i + 1))/$count] $tool push $ref"
  "$tool" push "$ref"
done

cat <<INSTRUCTIONS

Pushed $count images to $registry with tag $tag. Install with them:

  helm install porchlight deploy/helm/porchlight --namespace porchlight-system \\
    --create-namespace --take-ownership --set image.registry=$registry --set image.tag=$tag

or with kustomize (the kustomize CLI), in an overlay of deploy/:

  mkdir porchlight-overlay && cd porchlight-overlay
  kustomize create --resources ../deploy
  kustomize edit set image porchlight/controller=$registry/controller:$tag porchlight/gateway=$registry/gateway:$tag porchlight/nats=$registry/nats:$tag
  kustomize edit add patch --kind Deployment --name porchlight-controller --patch \\
    '{"spec":{"template":{"spec":{"containers":[{"name":"controller","env":[{"name":"PORCHLIGHT_RUNTIME_IMAGE","value":"$registry/runtime-python:$tag"},{"name":"PORCHLIGHT_NODE_RUNTIME_IMAGE","value":"$registry/runtime-node:$tag"}]}]}}}}'
  kubectl apply -k .
INSTRUCTIONS
