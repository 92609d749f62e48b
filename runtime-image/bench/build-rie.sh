#!/bin/sh
# Builds AWS's Runtime Interface Emulator, the baseline of the warm_invoke
# benchmark, from the Go module proxy into /root/.cache/porchlight/bin.
# The binary is never committed.
set -eu
GOBIN="${GOBIN:-/root/.cache/porchlight/bin}"
mkdir -p "$GOBIN"
GOBIN="$GOBIN" go install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@latest
echo "$GOBIN/aws-lambda-rie"
