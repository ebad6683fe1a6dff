#!/usr/bin/env bash
# TLS-only Redis and PostgreSQL for tests/it/tls.rs, on loopback, with a CA and
# certificates made here by openssl:
#
#   servers.sh up DIR REDIS_PORT REDIS_MTLS_PORT REDIS_EXPIRED_PORT PG_PORT OWNER_PID
#   servers.sh down DIR
#
# - Redis on REDIS_PORT: TLS only (--port 0), requirepass, an ACL user
#   "ingest"; on REDIS_MTLS_PORT the same with --tls-auth-clients yes; on
#   REDIS_EXPIRED_PORT the same with an expired certificate.
# - PostgreSQL on PG_PORT: ssl=on, pg_hba `hostssl` with scram passwords and
#   `host ... reject`, so plaintext is refused.
# - DIR/certs: ca.crt (signs everything), other-ca.crt (the wrong CA),
#   server.crt for DNS:localhost and IP:127.0.0.1, expired.crt (the same
#   names, expired yesterday), client.crt/key.
# Everything stops when OWNER_PID (the test process) exits, or on `down`.
# Passwords: Redis default user and "ingest" user: see REDIS_PASSWORD and
# INGEST_PASSWORD below; Postgres user postgres: PG_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/../.."

REDIS_PASSWORD='redis-s3cret'
INGEST_PASSWORD='ingest-s3cret'
PG_PASSWORD='pg-s3cret'

say() { echo "tls servers: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# detached, newest_pg_bin
# shellcheck source=scripts/lib/daemons.sh
source scripts/lib/daemons.sh

install_missing() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v redis-server >/dev/null || missing+=(redis-server)
  [[ -x $(newest_pg_bin)/initdb ]] || missing+=(postgresql)
  ((${#missing[@]} == 0)) && return 0
  say "installing ${missing[*]} with apt-get"
  detached env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  detached env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
    --no-install-recommends "${missing[@]}" >/dev/null
}

make_certs() {
  local c=$dir/certs
  mkdir -p "$c"
  chmod 755 "$c"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 2 -subj /CN=swisper-test-ca \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
  openssl req -x509 "${ec[@]}" -days 2 -subj /CN=some-other-ca \
    -keyout "$c/other-ca.key" -out "$c/other-ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=localhost -keyout "$c/server.key" -out "$c/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$c/server.ext"
  openssl x509 -req -in "$c/server.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 2 -extfile "$c/server.ext" -out "$c/server.crt" 2>/dev/null
  # -days -1: not after yesterday, an expired certificate.
  openssl x509 -req -in "$c/server.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days -1 -extfile "$c/server.ext" -out "$c/expired.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=swisper-ingest -keyout "$c/client.key" -out "$c/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$c/client.ext"
  openssl x509 -req -in "$c/client.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 2 -extfile "$c/client.ext" -out "$c/client.crt" 2>/dev/null
  chmod 644 "$c"/*.crt "$c"/*.key
  # Postgres insists on a key that only its user can read.
  cp "$c/server.key" "$c/pg-server.key"
  chown postgres: "$c/pg-server.key"
  chmod 600 "$c/pg-server.key"
}

start_redis() {
  local name=$1 port=$2 auth_clients=$3 cert=${4:-server.crt}
  local c=$dir/certs
  detached redis-server --port 0 --bind 127.0.0.1 --tls-port "$port" \
    --tls-cert-file "$c/$cert" --tls-key-file "$c/server.key" \
    --tls-ca-cert-file "$c/ca.crt" --tls-auth-clients "$auth_clients" \
    --requirepass "$REDIS_PASSWORD" \
    --user ingest on ">$INGEST_PASSWORD" '~*' '&*' +@all \
    --save '' --appendonly no --dir "$dir" --daemonize yes \
    --pidfile "$dir/$name.pid" --logfile "$dir/$name.log"
  local deadline=$((SECONDS + 30))
  until redis-cli --tls --insecure --cert "$c/client.crt" --key "$c/client.key" \
    -h 127.0.0.1 -p "$port" -a "$REDIS_PASSWORD" --no-auth-warning ping 2>/dev/null | grep -q PONG; do
    ((SECONDS < deadline)) || die "redis $name did not answer on $port; see $dir/$name.log"
    sleep 0.1
  done
}

start_postgres() {
  local port=$1 bin
  bin=$(newest_pg_bin)
  mkdir -m 700 "$dir/pg"
  mkdir -p "$dir/sock"
  echo "$PG_PASSWORD" >"$dir/pwfile"
  touch "$dir/pg.log"
  chown postgres: "$dir/pg" "$dir/sock" "$dir/pwfile" "$dir/pg.log"
  runuser -u postgres -- "$bin/initdb" -D "$dir/pg" -U postgres --pwfile="$dir/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
  cat >>"$dir/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
ssl = on
ssl_cert_file = '$dir/certs/server.crt'
ssl_key_file = '$dir/certs/pg-server.key'
password_encryption = 'scram-sha-256'
CONF
  cat >"$dir/pg/pg_hba.conf" <<'HBA'
local   all all                 trust
hostssl all all 127.0.0.1/32    scram-sha-256
host    all all 127.0.0.1/32    reject
HBA
  detached runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 60 \
    -o "-p $port -k $dir/sock" start >/dev/null 2>&1 ||
    die "postgres did not start; $(tail -n 5 "$dir/pg.log")"
}

stop_all() {
  local pid name
  for name in redis redis-mtls redis-expired; do
    pid=$(cat "$dir/$name.pid" 2>/dev/null) || continue
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]]; then kill "$pid" 2>/dev/null || true; fi
    rm -f "$dir/$name.pid"
  done
  if [[ -f $dir/pg/postmaster.pid ]]; then
    runuser -u postgres -- "$(newest_pg_bin)/pg_ctl" -D "$dir/pg" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
}

command=${1:-}
dir=${2:-}
[[ -n $dir ]] || die "usage: $0 up DIR REDIS_PORT REDIS_MTLS_PORT REDIS_EXPIRED_PORT PG_PORT OWNER_PID | down DIR"
case $command in
  up)
    redis_port=$3 mtls_port=$4 expired_port=$5 pg_port=$6 owner=$7
    [[ $(id -u) == 0 ]] || die "run as root (Postgres runs as the postgres user)"
    install_missing
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 755 "$dir"
    # A failed start (initdb, a port taken) stops what it had started, since
    # the watchdog below is not running yet.
    trap stop_all EXIT
    make_certs
    start_redis redis "$redis_port" no
    start_redis redis-mtls "$mtls_port" yes
    start_redis redis-expired "$expired_port" no expired.crt
    start_postgres "$pg_port"
    trap - EXIT
    # The watchdog: stops the servers when the test process is gone.
    detached setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; '$PWD/tests/tls/servers.sh' down '$dir'" \
      >/dev/null 2>&1 &
    cat >"$dir/env" <<ENV
REDIS_PASSWORD=$REDIS_PASSWORD
INGEST_PASSWORD=$INGEST_PASSWORD
PG_PASSWORD=$PG_PASSWORD
ENV
    ;;
  down)
    stop_all
    rm -rf "$dir"
    ;;
  *) die "unknown command $command" ;;
esac
