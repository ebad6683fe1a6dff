#!/usr/bin/env bash
# Local Redis and PostgreSQL on loopback for tests and demos: installs them
# when missing (Debian, as root), runs them on free ports in a state folder,
# and stops them by the PIDs it recorded, never by name.
#
#   scripts/services.sh up DIR              install if needed, start, write DIR/env
#   scripts/services.sh down DIR            stop both (data kept)
#   scripts/services.sh stop-postgres DIR   | start-postgres DIR
#   scripts/services.sh stop-redis DIR      | start-redis DIR | kill-redis DIR
#   scripts/services.sh status DIR          exit 0 when both answer
#   scripts/services.sh purge DIR           down, then delete DIR
#
# `up` with REDIS_AOF=1 runs Redis with appendonly (as production would).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "services.sh: $*" >&2; exit 1; }

apt_updated=
apt_install() {
  if [[ -z $apt_updated ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_missing() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "installing redis-server" >&2
    apt_install redis-server
  fi
  if [[ ! -x $PG_BIN/initdb ]]; then
    echo "installing postgresql" >&2
    apt_install postgresql
  fi
  # Postgres refuses to run as root.
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_postgres() { runuser -u postgres -- "$@"; }

load_env() {
  [[ -f $dir/env ]] || die "$dir/env missing: run 'up' first"
  # shellcheck disable=SC1091
  source "$dir/env"
}

redis_alive() { [[ -f $dir/redis.pid ]] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; }
postgres_alive() { as_postgres "$PG_BIN/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; }

wait_until() {
  local what=$1
  shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within 30 s (logs in $dir)"
}

start_redis() {
  local persistence=(--save '' --appendonly no)
  if [[ $(cat "$dir/redis.aof" 2>/dev/null) == 1 ]]; then
    persistence=(--save '' --appendonly yes --appendfsync everysec)
  fi
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir/redis" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "${persistence[@]}"
  wait_until "redis" redis-cli -p "$REDIS_PORT" ping
}

stop_redis() {
  local signal=${1:-TERM}
  redis_alive || return 0
  local pid
  pid=$(cat "$dir/redis.pid")
  kill "-$signal" "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/redis.pid"; return 0; }
    sleep 0.1
  done
  die "redis (pid $pid) did not stop"
}

start_postgres() {
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 30 \
    -o "-h 127.0.0.1 -p $PG_PORT -k $dir/sock -c max_connections=100 -c shared_buffers=128MB" start >/dev/null
}

stop_postgres() {
  postgres_alive || return 0
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/pg" -m fast -w -t 30 stop >/dev/null
}

up() {
  install_missing
  mkdir -p "$dir"
  chmod 755 "$dir"
  if [[ -f $dir/env ]]; then
    load_env
    redis_alive || start_redis
    postgres_alive || start_postgres
    echo "services up; env: $dir/env"
    return
  fi
  REDIS_PORT=$(free_port)
  PG_PORT=$(free_port)
  while [[ $PG_PORT == "$REDIS_PORT" ]]; do PG_PORT=$(free_port); done
  mkdir -p "$dir/redis" "$dir/sock"
  echo "${REDIS_AOF:-0}" >"$dir/redis.aof"
  chown postgres "$dir" "$dir/sock"
  as_postgres "$PG_BIN/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -5 "$dir/initdb.log")"
  start_postgres
  as_postgres "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE swisper_ingest" >/dev/null
  start_redis
  cat >"$dir/env" <<ENV
export OBSERVABILITY_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/swisper_ingest
export REDIS_PORT=$REDIS_PORT PG_PORT=$PG_PORT SERVICES_DIR=$dir
ENV
  echo "services up; env: $dir/env"
}

status() {
  load_env
  local ok=0
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then echo "redis: up on $REDIS_PORT"; else echo "redis: down"; ok=1; fi
  if "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then echo "postgres: up on $PG_PORT"; else echo "postgres: down"; ok=1; fi
  return $ok
}

action=${1:-}
dir=${2:-}
case $action in
  -h | --help | help | "") usage; exit 0 ;;
esac
[[ -n $dir ]] || die "usage: services.sh $action DIR"
case $action in
  up) up ;;
  down) [[ -f $dir/env ]] || exit 0; load_env; stop_redis; stop_postgres ;;
  stop-postgres) load_env; stop_postgres ;;
  start-postgres) load_env; start_postgres ;;
  stop-redis) load_env; stop_redis TERM ;;
  kill-redis) load_env; stop_redis KILL ;;
  start-redis) load_env; start_redis ;;
  status) status ;;
  purge) if [[ -f $dir/env ]]; then load_env; stop_redis; stop_postgres; fi; rm -rf "$dir" ;;
  *) die "unknown action '$action' (try --help)" ;;
esac
