#!/usr/bin/env bash
# Local Redis and PostgreSQL on loopback for tests and demos (Debian).
# As root: installs them when missing and runs Postgres as the postgres user.
# As anyone else: runs the installed binaries as that user. Either way on free
# 127.0.0.1 ports with their data in a state folder, stopped only by the PIDs
# recorded there.
set -euo pipefail
# State files must be readable by the postgres user and by callers.
umask 022

readonly PROG=services.sh
readonly DB_NAME=swisper_ingest
# Bounded waits (seconds) for a server to answer or to stop.
TIMEOUT=${SERVICES_TIMEOUT:-30}
# Ports handed out to state folders, shared by all runs on this machine (all
# of one user's when /var/lib is not theirs to write), so a port stays
# reserved while its server is stopped for a fault test.
readonly SHARED_REGISTRY=/var/lib/swisper-services
REGISTRY=${SERVICES_REGISTRY:-}
# The state folder; set by resolve_dir (empty for `check`).
dir=

usage() {
  cat <<'EOF'
Usage: scripts/services.sh ACTION DIR

Runs a local Redis 7 and PostgreSQL 15 on 127.0.0.1 for tests and demos, with
all state in DIR (created if missing).

As root: installs redis-server / postgresql with apt-get when missing (and
pgbouncer, which tests/it/pg_errors.rs runs itself) and runs Postgres as the
postgres user; Postgres trusts every loopback connection.
As any other user: needs them installed (redis-server and redis-cli on PATH;
initdb, pg_ctl, postgres, pg_isready, psql in /usr/lib/postgresql/*/bin) and
runs both as that user. DIR is private to the user (mode 700), Postgres
trusts its Unix socket in DIR/sock and asks TCP clients for a generated
password (DIR/pg.password; in DATABASE_URL and PGPASSWORD in DIR/env).

Actions:
  up DIR              install if needed, start both on free ports, create the
                      database swisper_ingest, write DIR/env; idempotent (restarts
                      a dead server on its port). REDIS_AOF=1 at the first `up`
                      turns on Redis appendonly (everysec), kept for restarts.
  down DIR            stop both (Postgres fast shutdown, Redis SIGTERM); data kept
  stop-postgres DIR   stop Postgres only        start-postgres DIR  start it again
  stop-redis DIR      SIGTERM Redis and wait    start-redis DIR     start it again
  kill-redis DIR      SIGKILL Redis (no shutdown save), then wait
  status DIR          print whether each is up; exit 0 only when both are
  purge DIR           down, then delete DIR
  check               print the Debian packages this user still needs, one a
                      line; exit 1 when some are missing (as root: none, since
                      up installs them)

DIR/env (source it) exports OBSERVABILITY_REDIS_URL, DATABASE_URL, REDIS_PORT,
PG_PORT and SERVICES_DIR. Logs: DIR/pg.log, DIR/redis.log.

Environment: REDIS_AOF=1 (see up), SERVICES_TIMEOUT (seconds, default 30),
SERVICES_REGISTRY (port reservations, default /var/lib/swisper-services; for
a user who cannot write there ${XDG_RUNTIME_DIR:-/tmp}/swisper-services-UID).
EOF
}

say() { echo "$PROG: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# detached (our lock files are fds 7-9), newest_pg_bin
# shellcheck source=scripts/lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemons.sh"

is_root() { ((EUID == 0)); }

# The prefix that runs a command as the owner of the Postgres cluster:
# Postgres refuses to run as root, so root hands it to the postgres user.
pg_owner=()
if is_root; then pg_owner=(runuser -u postgres --); fi

as_postgres() { "${pg_owner[@]}" "$@"; }

# The port registry: the shared one for root and for users allowed to write
# it, else one of the user's own (made by lock_ports when first needed).
private_registry=
choose_registry() {
  if [[ -n $REGISTRY ]]; then return 0; fi
  REGISTRY=$SHARED_REGISTRY
  if is_root || { [[ -w $REGISTRY && -w $REGISTRY/ports && -w $REGISTRY/ports.lock ]]; }; then return 0; fi
  REGISTRY=${XDG_RUNTIME_DIR:-/tmp}/swisper-services-$EUID
  private_registry=1
}

# ---------------------------------------------------------------- arguments

resolve_dir() {
  [[ -n $1 ]] || die "DIR is empty"
  dir=$(realpath -m -- "$1")
  # DIR ends up in pg_ctl's -o string (run by /bin/sh), in a comma-separated
  # socket list and in a sourced file: keep it to characters safe in all three.
  [[ $dir =~ ^/[A-Za-z0-9._/@+-]+$ ]] ||
    die "DIR '$dir' may only contain letters, digits and . _ / @ + -"
  # Unix socket paths are limited to 107 bytes.
  local sock="$dir/sock/.s.PGSQL.65535"
  ((${#sock} <= 107)) || die "DIR '$dir' is too long for Postgres's Unix socket path; use a shorter one"
  [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "SERVICES_TIMEOUT must be a positive number of seconds"
}

# ---------------------------------------------------------------- installing

# Postgres binaries: the cluster's own major version when DIR/pg exists, else
# 15, else the newest installed. Returns 1 when none are installed.
set_pg_bin() {
  PG_BIN=
  if [[ -f $dir/pg/PG_VERSION ]]; then
    PG_BIN=/usr/lib/postgresql/$(<"$dir/pg/PG_VERSION")/bin
  else
    PG_BIN=$(newest_pg_bin)
  fi
  local tool
  for tool in initdb pg_ctl postgres pg_isready psql; do
    [[ -x $PG_BIN/$tool ]] || return 1
  done
}

missing_packages() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo redis-server
  fi
  set_pg_bin || echo postgresql
  # Not run here: tests/it/pg_errors.rs (run as root) starts its own in front of
  # our Postgres.
  if is_root; then command -v pgbouncer >/dev/null || echo pgbouncer; fi
}

# Without root nothing can be installed: say what to install and stop.
require_installed() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  [[ -z $missing ]] && return 0
  die "not installed: ${missing% }. Install as root:
  apt-get install -y --no-install-recommends ${missing% }
or run this script as root, which installs them (needed without root: redis-server and
redis-cli on PATH; initdb, pg_ctl, postgres, pg_isready and psql in /usr/lib/postgresql/*/bin)"
}

apt_install() {
  local log
  log=$(mktemp /tmp/services-apt.XXXXXX)
  say "installing $* with apt-get (log: $log)"
  # Lock::Timeout: wait for another apt-get instead of failing on the dpkg lock.
  # The packages may start their own servers on 6379/5432: we ignore them.
  if ! detached env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >"$log" 2>&1 ||
    ! detached env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "$@" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "apt-get install $* failed (full log: $log)"
  fi
  rm -f "$log"
}

install_missing() {
  if ! is_root; then
    require_installed
    set_pg_bin || die "no PostgreSQL binaries in $PG_BIN"
    return 0
  fi
  local missing
  missing=$(missing_packages)
  if [[ -n $missing ]]; then
    # One installer at a time; a concurrent run may have installed meanwhile.
    mkdir -p "$REGISTRY"
    exec 7>"$REGISTRY/install.lock"
    flock -w 900 7 || die "timed out waiting for another run's package install ($REGISTRY/install.lock)"
    missing=$(missing_packages)
    # shellcheck disable=SC2086 # one package name per word
    [[ -z $missing ]] || apt_install $missing
    exec 7>&-
    [[ -z $(missing_packages) ]] || die "still missing after apt-get: $(missing_packages | tr '\n' ' ')"
  fi
  # Postgres refuses to run as root; the Debian package creates this user,
  # but binaries may come from elsewhere.
  if ! id -u postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
      die "could not create the postgres user"
  fi
  set_pg_bin || die "no PostgreSQL binaries in $PG_BIN"
}

# ---------------------------------------------------------------- locks, env, ports

lock_dir() {
  [[ -d $dir ]] || die "$dir does not exist: run '$PROG up $dir' first"
  exec 8>"$dir/.lock"
  flock -w 300 8 || die "another services.sh run holds $dir/.lock"
}

lock_ports() {
  if [[ -n $private_registry ]]; then
    # Another user could squat the name in /tmp: it must be ours, not a link.
    [[ -e $REGISTRY ]] || mkdir -m 700 "$REGISTRY" 2>/dev/null || true
    [[ -d $REGISTRY && ! -L $REGISTRY && -O $REGISTRY ]] ||
      die "$REGISTRY is not a folder of this user's; remove it or set SERVICES_REGISTRY"
  fi
  mkdir -p "$REGISTRY/ports"
  exec 9>"$REGISTRY/ports.lock"
  flock -w 60 9 || die "timed out waiting for $REGISTRY/ports.lock"
}

unlock_ports() { exec 9>&-; }

# Loads REDIS_PORT and PG_PORT from DIR/env; returns 1 when there is none.
read_env() {
  [[ -f $dir/env ]] || return 1
  local ports
  # shellcheck disable=SC1091 # our own file; a subshell keeps its exports out
  ports=$(source "$dir/env" && echo "${REDIS_PORT:-} ${PG_PORT:-}") || die "cannot read $dir/env"
  read -r REDIS_PORT PG_PORT <<<"$ports"
  [[ $REDIS_PORT =~ ^[0-9]+$ && $PG_PORT =~ ^[0-9]+$ ]] || die "$dir/env has no valid REDIS_PORT/PG_PORT"
}

need_env() { read_env || die "$dir/env missing: run '$PROG up $dir' first"; }

write_env() {
  local password="" auth=""
  if [[ -s $dir/pg.password ]]; then
    password=$(<"$dir/pg.password")
    auth=:$password
  fi
  {
    printf 'export OBSERVABILITY_REDIS_URL=redis://127.0.0.1:%s\n' "$REDIS_PORT"
    printf 'export DATABASE_URL=postgres://postgres%s@127.0.0.1:%s/%s\n' "$auth" "$PG_PORT" "$DB_NAME"
    # So that plain `psql -h 127.0.0.1 -p $PG_PORT -U postgres` works as with root's.
    if [[ -n $password ]]; then printf 'export PGPASSWORD=%s\n' "$password"; fi
    printf 'export REDIS_PORT=%s PG_PORT=%s SERVICES_DIR=%q\n' "$REDIS_PORT" "$PG_PORT" "$dir"
  } >"$dir/env.tmp"
  if is_root; then chmod 644 "$dir/env.tmp"; else chmod 600 "$dir/env.tmp"; fi
  mv -f "$dir/env.tmp" "$dir/env"
}

# Without root Postgres runs as this user, and a superuser session can run
# programs as its owner (COPY ... TO PROGRAM): other local users must not get
# one for free, so TCP clients need this password (hex: safe in a URL).
ensure_pg_password() {
  if is_root || [[ -s $dir/pg.password ]]; then return 0; fi
  local password
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  [[ ${#password} == 32 ]] || die "could not read 16 random bytes from /dev/urandom"
  (umask 077 && printf '%s\n' "$password" >"$dir/pg.password")
}

# A reservation is live while its folder's env still names the port.
port_reserved_by() {
  local owner
  owner=$(cat "$REGISTRY/ports/$1" 2>/dev/null) || return 1
  [[ -f $owner/env ]] && grep -Eq "(^| )(REDIS|PG)_PORT=$1( |\$)" "$owner/env" || return 1
  echo "$owner"
}

# Records DIR's ports (also for folders made before the registry existed).
reserve_ports() {
  local port owner
  lock_ports
  for port in "$REDIS_PORT" "$PG_PORT"; do
    if owner=$(port_reserved_by "$port"); then
      [[ $owner == "$dir" ]] || say "warning: port $port is also used by $owner"
    else
      echo "$dir" >"$REGISTRY/ports/$port"
    fi
  done
  unlock_ports
}

release_ports() {
  local port
  for port in "$REDIS_PORT" "$PG_PORT"; do
    [[ $(cat "$REGISTRY/ports/$port" 2>/dev/null) != "$dir" ]] || rm -f "$REGISTRY/ports/$port"
  done
}

# True when a plain bind (no SO_REUSEADDR) to 127.0.0.1:PORT succeeds. Perl
# first: perl-base is essential on Debian (python3 is not on minimal images)
# and starts in milliseconds.
port_free() {
  if command -v perl >/dev/null; then
    perl -MIO::Socket::INET -e \
      'exit(IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0], Proto => "tcp") ? 0 : 1)' "$1"
  else
    python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
  fi
}

# Picks two ports that bind on 127.0.0.1 and no other DIR holds, then records
# them (registry + DIR/env) before releasing the registry lock, so concurrent
# runs never pick the same. Ports come from below the kernel's ephemeral range
# (not bind(0)): there the kernel never hands a port to an outgoing connection,
# which could otherwise take it while a server is stopped for a fault test.
allocate_ports() {
  local eph low=20000 high port tries=0 picked=()
  eph=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  high=$((eph - 1))
  ((high >= low + 1000)) || high=29999
  lock_ports
  while ((${#picked[@]} < 2)); do
    tries=$((tries + 1))
    ((tries <= 1000)) || die "found no free port in $low-$high"
    port=$((low + (RANDOM * 32768 + RANDOM) % (high - low + 1)))
    [[ ${picked[0]:-} != "$port" ]] || continue
    ! port_reserved_by "$port" >/dev/null || continue
    port_free "$port" || continue
    picked+=("$port")
  done
  REDIS_PORT=${picked[0]} PG_PORT=${picked[1]}
  echo "$dir" >"$REGISTRY/ports/$REDIS_PORT"
  echo "$dir" >"$REGISTRY/ports/$PG_PORT"
  write_env
  unlock_ports
}

# ---------------------------------------------------------------- processes

# Zombies count as gone: PID 1 in a container may not reap them promptly.
proc_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != [ZX] ]]
}

wait_gone() {
  local deadline=$((SECONDS + TIMEOUT))
  while proc_running "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------- redis

# Prints the recorded Redis PID if that process is still our redis-server (a
# stale pidfile's PID may belong to another program after a crash or reboot).
redis_pid() {
  local pid
  [[ -f $dir/redis.pid ]] || return 1
  pid=$(<"$dir/redis.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]] || return 1
  # Redis titles itself "redis-server 127.0.0.1:PORT".
  if [[ -n ${REDIS_PORT:-} ]]; then
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *":$REDIS_PORT"* ]] || return 1
  fi
  echo "$pid"
}

redis_cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@" 2>/dev/null; }

# True when the server answering on REDIS_PORT is the recorded process.
redis_ours_answers() {
  local pid
  pid=$(redis_pid) || return 1
  [[ $(redis_cli info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p') == "$pid" ]]
}

redis_aof() { [[ $(cat "$dir/redis.aof" 2>/dev/null) == 1 ]]; }

start_redis() {
  local log_size
  log_size=$(stat -c %s "$dir/redis.log" 2>/dev/null || echo 0)
  if ! redis_pid >/dev/null; then
    rm -f "$dir/redis.pid"
    mkdir -p "$dir/redis"
    local args=(--bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir/redis" --daemonize yes
      --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '')
    if redis_aof; then
      args+=(--appendonly yes --appendfsync everysec)
    else
      args+=(--appendonly no)
    fi
    detached redis-server "${args[@]}" >/dev/null 2>&1 || die "redis-server failed to launch; see $dir/redis.log"
  fi
  local deadline=$((SECONDS + TIMEOUT)) errors
  until redis_ours_answers; do
    # With --daemonize the launcher exits at once; a failed start (port taken,
    # bad AOF) only shows in the log, so look there instead of waiting it out.
    errors=$(tail -c +"$((log_size + 1))" "$dir/redis.log" 2>/dev/null |
      grep -E 'aborting|Fatal|FATAL|Bad file format|Address already in use' || true)
    [[ -z $errors ]] || die "redis did not start on 127.0.0.1:$REDIS_PORT: $errors"
    ((SECONDS < deadline)) || die "redis did not answer on 127.0.0.1:$REDIS_PORT within ${TIMEOUT}s; see $dir/redis.log"
    sleep 0.1
  done
}

stop_redis() {
  local signal=$1 pid
  if ! pid=$(redis_pid); then
    rm -f "$dir/redis.pid"
    return 0
  fi
  # SIGTERM: Redis flushes the AOF (if on) and exits; SIGKILL: nothing saved.
  kill -"$signal" "$pid" 2>/dev/null || true
  wait_gone "$pid" || die "redis (pid $pid) still running ${TIMEOUT}s after SIG$signal"
  rm -f "$dir/redis.pid"
}

# ---------------------------------------------------------------- postgres

# Prints the postmaster's PID if it is a live postgres process. Checked in
# /proc rather than with `pg_ctl status`, which counts a killed but not yet
# reaped (zombie) postmaster as running.
pg_pid() {
  local pid
  pid=$(head -n 1 "$dir/pg/postmaster.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres ]] || return 1
  echo "$pid"
}

pg_running() { pg_pid >/dev/null; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -t 3; }

# Postgres refuses to start while the PID in a leftover postmaster.pid exists
# (even as a zombie, or as another program after a reboot).
clear_stale_postmaster_pid() {
  local pid deadline=$((SECONDS + TIMEOUT))
  pid=$(head -n 1 "$dir/pg/postmaster.pid" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if [[ -e /proc/$pid && $(cat "/proc/$pid/comm" 2>/dev/null) != postgres ]]; then
    rm -f "$dir/pg/postmaster.pid"
    return 0
  fi
  # A killed postmaster: wait until its zombie is reaped.
  while [[ -e /proc/$pid ]]; do
    ((SECONDS < deadline)) || die "old postmaster (pid $pid) of $dir/pg is still there after ${TIMEOUT}s"
    sleep 0.2
  done
}

psql_admin() {
  local vars=(PGCONNECT_TIMEOUT=10)
  if [[ -s $dir/pg.password ]]; then vars+=("PGPASSWORD=$(<"$dir/pg.password")"); fi
  env "${vars[@]}" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

init_postgres() {
  [[ -f $dir/pg/PG_VERSION && -f $dir/pg/global/pg_control ]] && return 0
  rm -rf "$dir/pg"
  mkdir -m 700 "$dir/pg"
  local auth=(--auth=trust)
  if is_root; then
    # Postgres runs as the postgres user: it owns pg/ (DIR itself stays as is).
    chown postgres: "$dir/pg"
  else
    # The socket is in DIR, which only this user can enter.
    auth=(--auth-local=trust --auth-host=scram-sha-256 --pwfile="$dir/pg.password")
  fi
  local locale=C
  if locale -a 2>/dev/null | grep -qix 'c\.utf-\{0,1\}8'; then locale=C.UTF-8; fi
  as_postgres "$PG_BIN/initdb" -D "$dir/pg" -U postgres "${auth[@]}" -E UTF8 --locale="$locale" \
    >"$dir/initdb.log" 2>&1 || die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
  # In postgresql.conf rather than on the command line, so ALTER SYSTEM can
  # still change them; port and addresses stay on pg_ctl's command line.
  cat >>"$dir/pg/postgresql.conf" <<'EOF'

# scripts/services.sh: local test box
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = 128MB
EOF
}

start_postgres() {
  [[ -f $dir/pg/PG_VERSION ]] || die "no Postgres cluster in $dir/pg: run '$PROG up $dir'"
  if ! pg_running; then
    clear_stale_postmaster_pid
    # pg_ctl opens the log and postgres the socket folder as the cluster's owner.
    mkdir -p "$dir/sock"
    touch "$dir/pg.log"
    if is_root; then chown postgres: "$dir/sock" "$dir/pg.log"; fi
    detached "${pg_owner[@]}" "$PG_BIN/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t "$TIMEOUT" \
      -o "-h 127.0.0.1 -p $PG_PORT -k $dir/sock" start >/dev/null 2>&1 ||
      die "postgres did not start on 127.0.0.1:$PG_PORT; last lines of $dir/pg.log:
$(tail -n 5 "$dir/pg.log")"
  fi
  local deadline=$((SECONDS + TIMEOUT))
  until pg_ready; do
    ((SECONDS < deadline)) || die "postgres did not answer on 127.0.0.1:$PG_PORT within ${TIMEOUT}s; see $dir/pg.log"
    sleep 0.2
  done
}

stop_postgres() {
  pg_running || return 0
  detached "${pg_owner[@]}" "$PG_BIN/pg_ctl" -D "$dir/pg" -m fast -w -t "$TIMEOUT" stop >/dev/null 2>&1 ||
    die "postgres in $dir/pg did not stop within ${TIMEOUT}s; see $dir/pg.log"
}

ensure_database() {
  local exists
  exists=$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ||
    die "cannot query postgres on 127.0.0.1:$PG_PORT"
  [[ $exists == 1 ]] || psql_admin -c "CREATE DATABASE $DB_NAME" || die "CREATE DATABASE $DB_NAME failed"
}

# ---------------------------------------------------------------- actions

cmd_up() {
  local locked=
  if [[ -f $dir/env ]]; then
    lock_dir
    locked=1
    if read_env && [[ -n ${REDIS_AOF:-} ]]; then
      local kept=0
      if redis_aof; then kept=1; fi
      [[ $REDIS_AOF == "$kept" ]] || say "note: REDIS_AOF=$REDIS_AOF ignored: $dir keeps REDIS_AOF=$kept from its first 'up'"
    fi
    # Already running: nothing to install or start.
    if read_env && set_pg_bin && redis_ours_answers && pg_running && pg_ready; then
      echo "services up; env file: $dir/env"
      return 0
    fi
  fi
  install_missing
  if is_root; then
    # Postgres (running as postgres) must be able to reach DIR; check before
    # creating anything. DIR itself and missing parents get mode 755 below.
    local parent
    parent=$(dirname "$dir")
    while [[ ! -d $parent ]]; do parent=$(dirname "$parent"); done
    as_postgres test -x "$parent" ||
      die "the postgres user cannot reach $parent (private folder, like /root?); use a folder under /tmp"
    mkdir -p "$dir"
    chmod 755 "$dir"
  else
    # DIR holds the database password: this user's alone.
    mkdir -p "$dir"
    [[ -O $dir && ! -L $dir ]] || die "$dir belongs to another user; choose another folder"
    chmod 700 "$dir"
  fi
  [[ -n $locked ]] || lock_dir
  ensure_pg_password
  if read_env; then
    reserve_ports
    # Without root DIR/env carries the password, which may be new.
    is_root || write_env
  else
    # Remembered for every later restart of this folder's Redis.
    if [[ ${REDIS_AOF:-0} == 1 ]]; then echo 1 >"$dir/redis.aof"; else echo 0 >"$dir/redis.aof"; fi
    allocate_ports
  fi
  init_postgres
  set_pg_bin || die "no PostgreSQL $(<"$dir/pg/PG_VERSION") binaries in $PG_BIN"
  start_postgres
  ensure_database
  start_redis
  echo "services up; env file: $dir/env"
}

cmd_down() {
  [[ -d $dir ]] || return 0
  lock_dir
  read_env || true # ports are not needed to stop
  stop_redis TERM
  if set_pg_bin; then stop_postgres; fi
}

cmd_start_postgres() {
  lock_dir
  need_env
  reserve_ports
  set_pg_bin || die "no PostgreSQL binaries in $PG_BIN"
  start_postgres
}

cmd_stop_postgres() {
  [[ -d $dir ]] || return 0
  lock_dir
  read_env || true
  if set_pg_bin; then stop_postgres; fi
}

cmd_start_redis() {
  lock_dir
  need_env
  reserve_ports
  start_redis
}

cmd_stop_redis() {
  [[ -d $dir ]] || return 0
  lock_dir
  read_env || true
  stop_redis "$1"
}

cmd_status() {
  if ! read_env; then
    echo "redis: down (no $dir/env)"
    echo "postgres: down (no $dir/env)"
    return 1
  fi
  local rc=0
  if redis_ours_answers; then
    echo "redis: up on 127.0.0.1:$REDIS_PORT (pid $(redis_pid))"
  else
    echo "redis: down (port $REDIS_PORT)"
    rc=1
  fi
  if set_pg_bin && pg_running && pg_ready; then
    echo "postgres: up on 127.0.0.1:$PG_PORT (pid $(pg_pid))"
  else
    echo "postgres: down (port $PG_PORT)"
    rc=1
  fi
  return "$rc"
}

cmd_purge() {
  [[ -e $dir ]] || return 0
  [[ -d $dir ]] || die "$dir is not a folder"
  # rm -rf safety: only a folder this script set up (or an empty one), and
  # never a top-level folder such as /tmp.
  [[ $dir == /*/* ]] || die "refusing to delete top-level folder $dir"
  if [[ ! -e $dir/env && ! -e $dir/pg && ! -e $dir/redis && ! -e $dir/.lock ]] &&
    [[ -n $(ls -A "$dir") ]]; then
    die "refusing to delete $dir: it does not look like a services folder"
  fi
  cmd_down
  if read_env; then release_ports; fi
  rm -rf "$dir"
}

main() {
  local action=${1:-}
  case $action in
    -h | --help | help)
      usage
      return 0
      ;;
    "")
      usage >&2
      return 2
      ;;
    check)
      [[ $# -eq 1 ]] || die "usage: $PROG check (try --help)"
      # Root installs whatever is missing at `up`.
      is_root && return 0
      local missing
      missing=$(missing_packages)
      [[ -z $missing ]] && return 0
      echo "$missing"
      return 1
      ;;
    up | down | start-postgres | stop-postgres | start-redis | stop-redis | kill-redis | status | purge) ;;
    *) die "unknown action '$action' (try --help)" ;;
  esac
  [[ $# -eq 2 ]] || die "usage: $PROG $action DIR (try --help)"
  resolve_dir "$2"
  choose_registry
  # runuser keeps the working folder; the postgres user may not be able to read it.
  cd /
  case $action in
    up) cmd_up ;;
    down) cmd_down ;;
    start-postgres) cmd_start_postgres ;;
    stop-postgres) cmd_stop_postgres ;;
    start-redis) cmd_start_redis ;;
    stop-redis) cmd_stop_redis TERM ;;
    kill-redis) cmd_stop_redis KILL ;;
    status) cmd_status ;;
    purge) cmd_purge ;;
  esac
}

main "$@"
