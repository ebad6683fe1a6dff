# Sourced by loadtests/*.sh (from the repository's root): a temp folder with
# Redis and PostgreSQL on loopback (scripts/services.sh), stopped and removed
# on exit with the service the script started, if any (by its PID in
# svc_pid). Sets work, admin (the postgres database's URL) and port (free).
#
#   start_services NAME   NAME names the temp folder /tmp/swisper-NAME.XXXXXX

svc_pid=
cleanup() {
  [[ -n $svc_pid ]] && { kill -TERM "$svc_pid" 2>/dev/null || true; wait "$svc_pid" 2>/dev/null || true; }
  scripts/services.sh purge "$work/services" >/dev/null 2>&1 || true
  rm -rf "$work"
}

start_services() {
  work=$(mktemp -d "/tmp/swisper-$1.XXXXXX")
  chmod 755 "$work"
  trap cleanup EXIT
  scripts/services.sh up "$work/services" >/dev/null
  # shellcheck disable=SC1091
  source "$work/services/env"
  admin=${DATABASE_URL%/*}/postgres
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
}

# serve BIN DATABASE_URL STREAM: runs BIN serve on $port for STREAM (its
# group named the same) into that database, logging to $work/service.log;
# sets svc_pid and returns once it is ready (30 s at most).
serve() {
  local bin=$1 url=$2 stream=$3
  DATABASE_URL=$url OBSERVABILITY_STREAM_NAME=$stream OBSERVABILITY_GROUP_NAME=$stream \
    OBSERVABILITY_HTTP_ADDR=127.0.0.1:$port \
    OBSERVABILITY_SKIP_MIGRATIONS=true RUST_LOG=warn "$bin" serve >>"$work/service.log" 2>&1 &
  svc_pid=$!
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$bin not ready after 30 s; log: $work/service.log" >&2
  tail -5 "$work/service.log" >&2
  return 1
}
