#!/usr/bin/env bash
# Runs the whole Porchlight test suite: formatting, lints, unit tests, the
# in-process service tests, the integration tests with real Lambda clients
# (awslambdaric, boto3, the AWS CLI, the lambda_runtime crate), and the
# end-to-end tests on a real single-node Kubernetes cluster (tests/e2e).
#
# Python tools go into a virtualenv under $PORCHLIGHT_CACHE (default
# ~/.cache/porchlight), created on the first run and reused afterwards.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cache=${PORCHLIGHT_CACHE:-$HOME/.cache/porchlight}
mkdir -p "$cache"

step() { printf '\n==> %s\n' "$*"; }

step "Python clients for the integration tests (venv in $cache/venv)"
requirements="$root/tests/requirements.txt"
venv="$cache/venv"
stamp="$venv/.porchlight-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp" ||
  ! "$venv/bin/python" -c 'import awslambdaric, boto3' >/dev/null 2>&1; then
  # --clear: a venv left by another Python (or half made) is made anew.
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
export PORCHLIGHT_PYTHON="$venv/bin/python"
"$PORCHLIGHT_PYTHON" -c 'import awslambdaric, boto3; print("awslambdaric", awslambdaric.__version__, "boto3", boto3.__version__)'

step "No import cycles between modules (tests/module-cycles.py)"
python3 tests/module-cycles.py

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Build the binaries the integration tests drive"
cargo build --workspace --bins --locked
export PORCHLIGHT_RUST_BOOTSTRAP="$root/target/debug/bootstrap"

step "nats-server for the JetStream tests (built from the Go module into $cache/nats-server)"
nats_version=v2.14.10
nats_dir="$cache/nats-server/$nats_version"
if [ ! -x "$nats_dir/nats-server" ]; then
  command -v go >/dev/null || { echo "run.sh: go not found in PATH (it builds nats-server)" >&2; exit 1; }
  echo "building nats-server $nats_version (cached for later runs)"
  GOFLAGS=-mod=mod GOBIN="$nats_dir" timeout 900 go install "github.com/nats-io/nats-server/v2@$nats_version"
fi
export PORCHLIGHT_NATS_SERVER="$nats_dir/nats-server"
"$PORCHLIGHT_NATS_SERVER" --version

step "helm for the chart's render test (built from the Go module into $cache/helm)"
helm_version=v4.3.2
helm_dir="$cache/helm/$helm_version"
if [ ! -x "$helm_dir/helm" ]; then
  command -v go >/dev/null || { echo "run.sh: go not found in PATH (it builds helm)" >&2; exit 1; }
  echo "building helm $helm_version (cached for later runs)"
  GOFLAGS=-mod=mod GOBIN="$helm_dir" timeout 900 go install "helm.sh/helm/v4/cmd/helm@$helm_version"
fi
export PORCHLIGHT_HELM="$helm_dir/helm"
"$PORCHLIGHT_HELM" version --short

step "cargo test --workspace"
cargo test --workspace --locked -- --test-threads="${PORCHLIGHT_TEST_THREADS:-2}"

step "End-to-end tests on a real single-node Kubernetes cluster (tests/e2e; needs root)"
bash tests/e2e/run.sh
