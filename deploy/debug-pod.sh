#!/usr/bin/env bash
# Starts a throw-away pod with redis-cli or psql that connects exactly as the
# service does, for the runbooks of docs/operations.md. It copies from the
# Deployment the swisper-ingest container's env, envFrom and mounts, the
# pod's volumes (TLS files, credential files), security context, labels and
# annotations, so it works whichever way the release connects:
#   - URLs whole from a Secret (way A): the password is in the URL;
#   - host values with the password from a Secret key (way B), as an env
#     variable or as a mounted file (connection.credentialsFromFiles).
# Inside, `redis-cli` is a shell function that adds what the URL does not
# say: --tls (rediss://), --cacert, --cert/--key, --insecure, --user, and the
# password through REDISCLI_AUTH (never on the command line); `psql` gets
# PGPASSWORD. So every `redis-cli -u "$OBSERVABILITY_REDIS_URL" ...` and
# `psql "$DATABASE_URL"` of the runbooks works as written.
#
#   deploy/debug-pod.sh redis|postgres [-n NAMESPACE] [-d DEPLOYMENT]
#   NS=observability DEPLOY=swisper-ingest deploy/debug-pod.sh postgres
#   deploy/debug-pod.sh --print redis     # only print the pod overrides (JSON)
#
# Needs kubectl and jq. Images: REDIS_IMAGE (redis:7.2), POSTGRES_IMAGE
# (postgres:16); the pod is deleted when the shell exits.
set -euo pipefail

ns="${NS:-observability}"
deploy="${DEPLOY:-swisper-ingest}"
kubectl="${KUBECTL:-kubectl}"
print=0
tool=""
while (($#)); do
  case "$1" in
    -n) ns=$2; shift 2 ;;
    -d) deploy=$2; shift 2 ;;
    --print) print=1; shift ;;
    redis | postgres) tool=$1; shift ;;
    *) echo "usage: $0 redis|postgres [-n NAMESPACE] [-d DEPLOYMENT] [--print]" >&2; exit 2 ;;
  esac
done
[[ -n $tool ]] || { echo "usage: $0 redis|postgres [-n NAMESPACE] [-d DEPLOYMENT] [--print]" >&2; exit 2; }
command -v jq >/dev/null || { echo "debug-pod: needs jq" >&2; exit 1; }

if [[ $tool == redis ]]; then
  name=redis-debug image="${REDIS_IMAGE:-redis:7.2}"
else
  name=pg-debug image="${POSTGRES_IMAGE:-postgres:16}"
fi

# Runs in the pod: bash -c "$setup" debug-pod [COMMAND...] (default: a shell).
# shellcheck disable=SC2016 # expanded in the pod, not here
setup='
from_file() { [ -n "${1:-}" ] && cat "$1"; }
# Way B with credentialsFromFiles: the credentials are files; read them once here.
if [ -n "${OBSERVABILITY_REDIS_PASSWORD_FILE:-}" ]; then
  OBSERVABILITY_REDIS_PASSWORD="$(from_file "$OBSERVABILITY_REDIS_PASSWORD_FILE")"; export OBSERVABILITY_REDIS_PASSWORD
fi
if [ -n "${OBSERVABILITY_REDIS_USERNAME_FILE:-}" ]; then
  OBSERVABILITY_REDIS_USERNAME="$(from_file "$OBSERVABILITY_REDIS_USERNAME_FILE")"; export OBSERVABILITY_REDIS_USERNAME
fi
if [ -n "${OBSERVABILITY_DATABASE_PASSWORD_FILE:-}" ]; then
  PGPASSWORD="$(from_file "$OBSERVABILITY_DATABASE_PASSWORD_FILE")"; export PGPASSWORD
fi
# Way B: the password is not in the URL; redis-cli reads REDISCLI_AUTH.
if [ -n "${OBSERVABILITY_REDIS_PASSWORD:-}" ]; then export REDISCLI_AUTH="$OBSERVABILITY_REDIS_PASSWORD"; fi
redis-cli() {
  local a=()
  case "${OBSERVABILITY_REDIS_URL:-}" in rediss://*) a+=(--tls) ;; esac
  if [ -n "${OBSERVABILITY_REDIS_CA_FILE:-}" ]; then a+=(--cacert "$OBSERVABILITY_REDIS_CA_FILE"); fi
  if [ -n "${OBSERVABILITY_REDIS_CLIENT_CERT_FILE:-}" ]; then
    a+=(--cert "$OBSERVABILITY_REDIS_CLIENT_CERT_FILE" --key "$OBSERVABILITY_REDIS_CLIENT_KEY_FILE")
  fi
  if [ "${OBSERVABILITY_REDIS_TLS_INSECURE:-}" = true ]; then a+=(--insecure); fi
  if [ -n "${OBSERVABILITY_REDIS_USERNAME:-}" ]; then a+=(--user "$OBSERVABILITY_REDIS_USERNAME"); fi
  command redis-cli "${a[@]}" "$@"
}
export -f redis-cli
echo "connected as the service: redis-cli -u \"\$OBSERVABILITY_REDIS_URL\" ...   psql \"\$DATABASE_URL\"" >&2
if [ $# -eq 0 ]; then exec bash; else exec "$@"; fi
'

spec="$("$kubectl" -n "$ns" get deployment "$deploy" -o json)"
overrides="$(jq -c --arg name "$name" --arg image "$image" --arg setup "$setup" '
  .spec.template as $t
  | ($t.spec.containers[] | select(.name == "swisper-ingest")) as $c
  | {
      metadata: {
        # Labelled like the service (a server-side NetworkPolicy admits it),
        # but not as its component: the Service and the PDB leave it alone.
        labels: (($t.metadata.labels // {}) + {"app.kubernetes.io/component": "debug"}),
        annotations: ($t.metadata.annotations // {})
      },
      spec: {
        automountServiceAccountToken: false,
        securityContext: ($t.spec.securityContext // {}),
        volumes: ($t.spec.volumes // []),
        containers: [{
          name: $name, image: $image, stdin: true, tty: true,
          command: ["bash", "-c", $setup, "debug-pod"],
          env: (($c.env // []) + [{name: "HOME", value: "/tmp"}]),
          envFrom: ($c.envFrom // []),
          volumeMounts: ($c.volumeMounts // []),
          securityContext: (($c.securityContext // {}) + {readOnlyRootFilesystem: false})
        }]
      }
    }' <<<"$spec")"

if ((print)); then
  printf '%s\n' "$overrides"
  exit 0
fi
exec "$kubectl" -n "$ns" run "$name" --rm -it --restart=Never --image="$image" --overrides="$overrides"
