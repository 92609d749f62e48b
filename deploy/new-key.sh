#!/usr/bin/env bash
# Makes an access key for the gateway's signed Lambda API and stores it in
# the Secret the gateway reads (porchlight-gateway-keys), replacing the keys
# there. Prints the key as `export` lines for the AWS CLI, boto3 and
# porchlight-load:
#
#   eval "$(deploy/new-key.sh)"            # a key for every function
#   FUNCTIONS=hello deploy/new-key.sh      # a key for hello only
#   FUNCTIONS='hello,team-b.*' deploy/new-key.sh
#
# The gateway picks the change up within seconds, without a restart.
set -euo pipefail
NAMESPACE=${NAMESPACE:-porchlight-system}
FUNCTIONS=${FUNCTIONS:-*}
REGION=${AWS_REGION:-us-east-1}
id=AKPL$(openssl rand -hex 8 | tr 'a-f' 'A-F')
secret=$(openssl rand -base64 48 | tr -d '/+=\n' | cut -c1-40)
IFS=, read -ra names <<<"$FUNCTIONS"
functions=$(printf '"%s", ' "${names[@]}")
functions=${functions%, }
# Before `kubectl apply -k deploy/` too: the namespace is made if missing.
kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >&2
kubectl -n "$NAMESPACE" create secret generic porchlight-gateway-keys \
  --from-literal=keys.yaml="keys:
  - {accessKeyId: $id, secretAccessKey: $secret, functions: [$functions]}
" --dry-run=client -o yaml | kubectl apply -f - >&2
cat <<OUT
export AWS_ACCESS_KEY_ID=$id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=$REGION
OUT
echo "# or keep it in a profile: aws configure --profile porchlight (then --profile porchlight)" >&2
