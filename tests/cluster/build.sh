#!/usr/bin/env bash
# Build the Kubernetes binaries for the local test cluster from the official Go
# modules, at pinned versions, without Docker.
#
#   tests/cluster/build.sh            # build whatever is missing, print the bin dir
#   tests/cluster/build.sh --print    # only print the bin dir
#
# Output (outside git, never committed):
#   ${PORCHLIGHT_CACHE:-/root/.cache/porchlight}/k8s/<k8s version>/bin/
#     etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy crictl
#     coredns (the cluster's DNS, run by node.sh)
#   ${PORCHLIGHT_CACHE}/k8s/<k8s version>/src/{k8s,etcd,crictl}/   wrapper Go modules
# Go's own caches (GOMODCACHE, GOCACHE) stay where `go env` puts them.
#
# Idempotent: a binary that already exists is not rebuilt (delete it to force).
# Everything heavy runs under `nice -n 19`. Needs Go >= 1.24 and the module proxy.
#
# Versions: Kubernetes 1.34.x because kubelet >= 1.35 refuses cgroup v1 by
# default and CI hosts may be cgroup v1 "hybrid"; etcd is the version that
# k8s.io/kubernetes@v1.34.4 itself pins (go.etcd.io/etcd/server/v3 v3.6.4).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.34.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.4}
CRITOOLS_VERSION=${CRITOOLS_VERSION:-1.34.0}
COREDNS_VERSION=${COREDNS_VERSION:-1.15.0}
CACHE=${PORCHLIGHT_CACHE:-/root/.cache/porchlight}
ROOT=$CACHE/k8s/$K8S_VERSION
BIN=$ROOT/bin

if [[ ${1:-} == --print ]]; then echo "$BIN"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
NICE=(nice -n 19)
log() { printf '[build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }
mkdir -p "$BIN" "$ROOT/src"
T0=$SECONDS

# ---------------------------------------------------------------- Kubernetes
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
missing=()
for c in "${K8S_CMDS[@]}"; do [[ -x $BIN/$c ]] || missing+=("$c"); done

if ((${#missing[@]})); then
  log "kubernetes v$K8S_VERSION: building ${missing[*]}"
  W=$ROOT/src/k8s
  mkdir -p "$W"
  cd "$W"
  if [[ ! -f go.sum ]]; then
    rm -f go.mod
    log "downloading k8s.io/kubernetes@v$K8S_VERSION go.mod"
    json=$(timeout 600 "${NICE[@]}" go mod download -json "k8s.io/kubernetes@v$K8S_VERSION")
    upstream_mod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$json")
    [[ -f $upstream_mod ]] || { echo "no go.mod for k8s.io/kubernetes@v$K8S_VERSION: $json" >&2; exit 1; }
    gov=$(awk '$1=="go"{print $2; exit}' "$upstream_mod")
    go mod init porchlight.invalid/k8sbins >/dev/null 2>&1
    go mod edit -go="$gov"
    # Upstream pins its staging modules at v0.0.0 and resolves them with local
    # replaces that consumers do not see; map each to the published v0.X.Y.
    n=0
    for m in $(awk '$1 ~ /^k8s\.io\// && $2=="v0.0.0" {print $1}' "$upstream_mod"); do
      go mod edit -replace="$m=$m@v0.${K8S_VERSION#1.}"; n=$((n+1))
    done
    log "added $n staging replace directives (v0.${K8S_VERSION#1.})"
    go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
  fi
  # tools.go lists the commands, so that `go mod tidy` records all their dependencies;
  # tidy again whenever that list changes.
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    echo 'import ('
    for c in "${K8S_CMDS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ')'
  } >tools.go.new
  if [[ ! -f go.sum ]] || ! cmp -s tools.go tools.go.new; then
    mv tools.go.new tools.go
    log "resolving the module graph (go mod tidy; downloads ~1 GB on a cold module cache)"
    timeout 1800 "${NICE[@]}" go mod tidy
  fi
  rm -f tools.go.new
  info=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.info
  build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)
  build_date=${build_date:-1970-01-01T00:00:00Z}
  minor=$(cut -d. -f2 <<<"$K8S_VERSION")
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  pkgs=()
  for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  log "compiling (cold: tens of minutes on 2 cores; go build -v lists packages as they finish)"
  tmp=$(mktemp -d "$ROOT/out.XXXXXX")
  # -v prints one line per compiled package: the progress indicator.
  if ! timeout 5400 "${NICE[@]}" go build -v -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}" 2>&1 |
    awk '/^(#|[^ ]+\.go:|go: )/ {print; fflush(); next}
         {n++; if (n % 100 == 0) {printf "[build] %d packages compiled (last: %s)\n", n, $0; fflush()}}
         END {printf "[build] %d packages compiled\n", n}' >&2; then
    rm -rf "$tmp"; echo "build.sh: kubernetes build failed" >&2; exit 1
  fi
  for c in "${missing[@]}"; do mv "$tmp/$c" "$BIN/$c"; done
  rmdir "$tmp"
  log "kubernetes done"
fi

# ---------------------------------------------------------------------- etcd
if [[ ! -x $BIN/etcd ]]; then
  log "etcd v$ETCD_VERSION: building"
  W=$ROOT/src/etcd
  mkdir -p "$W"
  cd "$W"
  if [[ ! -f go.sum ]]; then
    cat >go.mod <<EOF
module porchlight.invalid/etcdbin

go 1.24.0

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
EOF
    cat >main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    timeout 1800 "${NICE[@]}" go mod tidy
  fi
  timeout 3600 "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" .
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  log "etcd done"
fi

# -------------------------------------------------------- crictl (debugging)
if [[ ${SKIP_CRICTL:-0} != 1 && ! -x $BIN/crictl ]]; then
  log "crictl v$CRITOOLS_VERSION: building"
  W=$ROOT/src/crictl
  mkdir -p "$W"
  cd "$W"
  if [[ ! -f go.sum ]]; then
    rm -f go.mod
    go mod init porchlight.invalid/crictlbin >/dev/null 2>&1
    go mod edit -require="sigs.k8s.io/cri-tools@v$CRITOOLS_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/cri-tools/cmd/crictl"\n' >tools.go
    timeout 1800 "${NICE[@]}" go mod tidy
  fi
  timeout 3600 "${NICE[@]}" go build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRITOOLS_VERSION" \
    -o "$BIN/crictl.tmp" sigs.k8s.io/cri-tools/cmd/crictl
  mv "$BIN/crictl.tmp" "$BIN/crictl"
  log "crictl done"
fi

# ------------------------------------------------------------------- CoreDNS
# Cluster DNS: Service names resolve in pods, as in any real cluster (kind
# runs CoreDNS too). Its main module builds with `go install` as published.
if [[ ! -x $BIN/coredns ]]; then
  log "coredns v$COREDNS_VERSION: building (a few minutes on a cold module cache)"
  tmp=$(mktemp -d)
  if ! timeout 3600 env GOBIN="$tmp" GOFLAGS=-mod=mod "${NICE[@]}" go install -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@v$COREDNS_VERSION"; then
    rm -rf "$tmp"; echo "build.sh: coredns build failed" >&2; exit 1
  fi
  mv "$tmp/coredns" "$BIN/coredns"
  rmdir "$tmp"
  log "coredns done"
fi

log "all binaries present in $BIN ($((SECONDS - T0)) s)"
echo "$BIN"
