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
