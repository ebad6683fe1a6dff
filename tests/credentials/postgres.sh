#!/usr/bin/env bash
# A PostgreSQL with password authentication for tests/it/credentials_rotation.rs
# (scripts/services.sh trusts every connection), on loopback:
#
#   postgres.sh up DIR PG_PORT OWNER_PID
#   postgres.sh down DIR
#
# TCP connections need a scram password; the Unix socket in DIR/sock trusts
# the postgres user (the test's own administration). Stops when OWNER_PID
# (the test process) exits, or on `down`.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "credentials postgres: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# detached, newest_pg_bin
# shellcheck source=scripts/lib/daemons.sh
source scripts/lib/daemons.sh

start_postgres() {
  local port=$1 bin
  bin=$(newest_pg_bin)
  [[ -x $bin/initdb ]] || die "no PostgreSQL: run scripts/services.sh up first (it installs it)"
  mkdir -m 700 "$dir/pg"
  mkdir -p "$dir/sock"
  touch "$dir/pg.log"
  chown postgres: "$dir/pg" "$dir/sock" "$dir/pg.log"
  runuser -u postgres -- "$bin/initdb" -D "$dir/pg" -U postgres \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
  cat >>"$dir/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
CONF
  detached runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 60 \
    -o "-p $port -k $dir/sock" start >/dev/null 2>&1 ||
    die "postgres did not start; $(tail -n 5 "$dir/pg.log")"
}

stop_postgres() {
  if [[ -f $dir/pg/postmaster.pid ]]; then
    runuser -u postgres -- "$(newest_pg_bin)/pg_ctl" -D "$dir/pg" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
}

command=${1:-}
dir=${2:-}
[[ -n $dir ]] || die "usage: $0 up DIR PG_PORT OWNER_PID | down DIR"
case $command in
  up)
    pg_port=$3 owner=$4
    [[ $(id -u) == 0 ]] || die "run as root (Postgres runs as the postgres user)"
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 755 "$dir"
    trap stop_postgres EXIT
    start_postgres "$pg_port"
    trap - EXIT
    # The watchdog: stops the server when the test process is gone.
    detached setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; '$PWD/tests/credentials/postgres.sh' down '$dir'" \
      >/dev/null 2>&1 &
    ;;
  down)
    stop_postgres
    rm -rf "$dir"
    ;;
  *) die "unknown command $command" ;;
esac
