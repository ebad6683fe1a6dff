#!/usr/bin/env bash
# End-to-end test of swisper-ingest against the real client, the Python SDK
# swisper-studio-sdk (pinned in tests/sdk/requirements.txt, installed from
# PyPI into a virtualenv in the tool cache): real LangGraph graphs traced by
# the SDK, published to a Redis stream, stored by the real binary in
# SwisperStudio's own tables (public.traces, public.observations; the
# service's state in schema swisper_ingest), checked in PostgreSQL
# (tests/sdk/test_sdk_e2e.py).
#
#   tests/sdk/run.sh [PYTEST ARGS...]
#   tests/sdk/run.sh --overhead [--runs N]   the SDK's cost per graph run
#                                            (tests/sdk/overhead.py) instead
#
# Uses the Redis and PostgreSQL of OBSERVABILITY_REDIS_URL and DATABASE_URL
# (as after `scripts/services.sh up DIR; source DIR/env`); when either is
# unset it starts its own with scripts/services.sh in a temporary folder and
# removes them at the end. Creates a fresh database sdk_e2e_<random> and a
# fresh stream (a standalone database: the service creates the studio's tables
# and the SDK's project), builds and starts `swisper-ingest serve` on them
# (re-reading model_pricing every second, for the test's prices), runs pytest,
# always stops the service by its PID (SIGTERM, then wait), and exits with
# pytest's status. The database is dropped after a passing run and kept after
# a failing one (its name and the service log are printed).
#
#   SWISPER_TOOLS_DIR   tool cache (default ~/.cache/swisper-ingest-tools);
#                       the virtualenv is SWISPER_TOOLS_DIR/sdk-venv, reused
#                       while requirements.txt and python3 are unchanged
#   SDK_E2E_KEEP=1      keep the database and the service log even on success
#
# Runs as root on Debian 12 (apt-get for python3-venv only when missing).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/tests/sdk"
tools="${SWISPER_TOOLS_DIR:-$HOME/.cache/swisper-ingest-tools}"
venv="$tools/sdk-venv"
export PATH="$HOME/.cargo/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1 # nothing written into the work tree
started_at=$SECONDS
mode=pytest
if [[ ${1:-} == --overhead ]]; then
  mode=overhead
  shift
fi

say() { echo "sdk-e2e: $*" >&2; }
die() {
  say "$*"
  exit 2
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------ state for cleanup
own_services=""
work=""
stream=""
project_id=""
service_pid=""
db_created=""
db_admin_url=""
status=1

# True while the process runs: an exited child that bash has not reaped yet is
# a zombie, which `kill -0` still reports as alive.
running() {
  local state
  state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# shellcheck disable=SC2329 # run by cleanup
stop_service() {
  [[ -n $service_pid ]] || return 0
  local pid=$service_pid code=0
  service_pid=""
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      say "the service (pid $pid) did not stop within 30 s of SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || code=$?
  if ((code != 0)); then
    say "the service exited with status $code (log: $work/service.log)"
  fi
}

# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
  stop_service
  if [[ -n $db_created ]]; then
    if [[ $status == 0 && ${SDK_E2E_KEEP:-0} != 1 ]]; then
      DB_ADMIN_URL="$db_admin_url" DB_NAME="$db_created" timeout 30 "$venv/bin/python" -c '
import os, psycopg
with psycopg.connect(os.environ["DB_ADMIN_URL"], autocommit=True, connect_timeout=10) as c:
    name = os.environ["DB_NAME"]
    c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
' || say "could not drop database $db_created"
    else
      say "kept database $db_created and the service log $work/service.log"
    fi
  fi
  if [[ -n $work && $status == 0 && ${SDK_E2E_KEEP:-0} != 1 ]]; then
    # The run's stream and the SDK's per-thread keys of the run's project.
    SDK_REDIS_URL="$OBSERVABILITY_REDIS_URL" SDK_STREAM="$stream" SDK_PROJECT="$project_id" \
      timeout 30 "$venv/bin/python" -c '
import os, redis
r = redis.Redis.from_url(os.environ["SDK_REDIS_URL"], socket_timeout=5)
keys, project = [os.environ["SDK_STREAM"]], os.environ["SDK_PROJECT"]
for kind in ("thread_trace", "invocation_status"):
    keys += r.scan_iter(f"swisper_studio:{kind}:{project}:*")
r.delete(*keys)
' || say "could not delete the stream $stream"
    rm -rf "$work"
  fi
  if [[ -n $own_services ]]; then
    "$repo/scripts/services.sh" purge "$own_services" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ Redis and Postgres
if [[ -z ${OBSERVABILITY_REDIS_URL:-} || -z ${DATABASE_URL:-} ]]; then
  own_services=$(mktemp -d /tmp/sdk-e2e-services.XXXXXX)
  chmod 755 "$own_services"
  say "OBSERVABILITY_REDIS_URL/DATABASE_URL not set: starting Redis and PostgreSQL in $own_services"
  timeout 900 "$repo/scripts/services.sh" up "$own_services" >&2 || die "scripts/services.sh up failed"
  # shellcheck disable=SC1091
  source "$own_services/env"
fi

# ------------------------------------------------------------ the SDK's virtualenv
install_venv() {
  mkdir -p "$tools"
  exec 8>"$tools/.sdk-venv.lock"
  flock -w 900 8 || die "another run holds $tools/.sdk-venv.lock"
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing python3-venv (apt)"
    timeout 600 apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq python3 python3-venv >/dev/null ||
      die "apt-get install python3-venv failed"
  fi
  local want
  want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version.split()[0])')"
  if [[ -f $venv/.stamp && "$(cat "$venv/.stamp")" == "$want" ]] &&
    "$venv/bin/python" -c 'import swisper_studio_sdk, langgraph, psycopg, pytest' 2>/dev/null; then
    return
  fi
  say "installing swisper-studio-sdk and the test's packages into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  timeout 900 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" ||
    die "pip install -r tests/sdk/requirements.txt failed"
  echo "$want" >"$venv/.stamp"
  exec 8>&-
}
install_venv
py="$venv/bin/python"

# ------------------------------------------------------------ the service
command -v cargo >/dev/null || die "cargo not found (install Rust, or put it on PATH)"
# The test runs the debug build; the benchmark a release build, as deployed,
# so that the service's own CPU use on the same machine is the production one.
profile=debug
[[ $mode == overhead ]] && profile=release
say "building swisper-ingest ($profile)"
cargo_args=(build --quiet --bin swisper-ingest)
[[ $profile == release ]] && cargo_args+=(--release)
(cd "$repo" && timeout 1800 cargo "${cargo_args[@]}") || die "cargo ${cargo_args[*]} failed"
binary="$repo/target/$profile/swisper-ingest"
[[ -x $binary ]] || die "$binary missing after the build"

suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
db_name="sdk_e2e_$suffix"
export DB_NAME="$db_name"
# The same server and credentials, another database name.
db_admin_url="$DATABASE_URL"
db_url=$(DB_ADMIN_URL="$db_admin_url" "$py" -c '
import os, urllib.parse as u
p = u.urlsplit(os.environ["DB_ADMIN_URL"])
print(u.urlunsplit(p._replace(path="/" + os.environ["DB_NAME"])))')
DB_ADMIN_URL="$db_admin_url" timeout 30 "$py" -c '
import os, psycopg
with psycopg.connect(os.environ["DB_ADMIN_URL"], autocommit=True, connect_timeout=10) as c:
    name = os.environ["DB_NAME"]
    c.execute(f"CREATE DATABASE {name}")
' || die "cannot create database $db_name on DATABASE_URL"
db_created="$db_name"

work=$(mktemp -d /tmp/sdk-e2e.XXXXXX)
stream="sdk-e2e:$suffix"
group="sdk-e2e-$suffix"
http_addr="127.0.0.1:$(free_port)"
project_id=$("$py" -c 'import uuid; print(uuid.uuid4())')

OBSERVABILITY_REDIS_URL="$OBSERVABILITY_REDIS_URL" \
  DATABASE_URL="$db_url" \
  OBSERVABILITY_STREAM_NAME="$stream" \
  OBSERVABILITY_GROUP_NAME="$group" \
  OBSERVABILITY_CONSUMER_NAME="sdk-e2e" \
  OBSERVABILITY_HTTP_ADDR="$http_addr" \
  OBSERVABILITY_BLOCK_MS=200 \
  OBSERVABILITY_PRICE_REFRESH_SECS=1 \
  RUST_LOG="${RUST_LOG:-info}" \
  NO_COLOR=1 \
  "$binary" serve >"$work/service.log" 2>&1 &
service_pid=$!
say "service pid $service_pid on http://$http_addr, database $db_name, stream $stream"

ready=0
for _ in $(seq 1 300); do
  running "$service_pid" || break
  if "$py" -c 'import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)' \
    "http://$http_addr/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if ((ready == 0)); then
  say "the service did not become ready within 30 s; its log:"
  tail -n 40 "$work/service.log" >&2
  status=2
  exit 2
fi

# ------------------------------------------------------------ pytest (or the benchmark)
status=0
export SWISPER_STUDIO_REDIS_URL="$OBSERVABILITY_REDIS_URL" \
  SWISPER_STUDIO_STREAM_NAME="$stream" \
  SWISPER_STUDIO_PROJECT_ID="$project_id" \
  SDK_E2E_DATABASE_URL="$db_url" \
  SDK_E2E_GROUP="$group" \
  SDK_E2E_HTTP_ADDR="$http_addr" \
  SDK_E2E_SERVICE_PID="$service_pid"
if [[ $mode == overhead ]]; then
  timeout 600 "$py" "$here/overhead.py" "$@" || status=$?
  # Did the service keep up? Everything published is stored shortly after.
  timeout 60 "$py" - <<'PY' || status=$?
import os, time, psycopg, redis
r = redis.Redis.from_url(os.environ["SWISPER_STUDIO_REDIS_URL"])
stream, group = os.environ["SWISPER_STUDIO_STREAM_NAME"], os.environ["SDK_E2E_GROUP"]
t0 = time.monotonic()
while time.monotonic() - t0 < 30:
    g = next(g for g in r.xinfo_groups(stream) if g["name"].decode() == group)
    if g["pending"] == 0 and g.get("lag") == 0:
        break
    time.sleep(0.2)
with psycopg.connect(os.environ["SDK_E2E_DATABASE_URL"]) as c:
    traces, = c.execute("SELECT count(*) FROM public.traces").fetchone()
    observations, = c.execute("SELECT count(*) FROM public.observations").fetchone()
    letters, = c.execute("SELECT count(*) FROM swisper_ingest.dead_letters").fetchone()
print(f"\nservice: {r.xlen(stream)} stream entries, group lag {g.get('lag')}, pending {g['pending']}; "
      f"stored {traces} traces, {observations} observations, {letters} dead letters")
PY
else
  timeout 300 "$py" -m pytest -c "$here/pytest.ini" --rootdir "$here" "$here" "$@" || status=$?
fi

if ((status != 0)); then
  say "$mode exited with $status; last lines of the service log:"
  tail -n 30 "$work/service.log" >&2 || true
fi
say "done in $((SECONDS - started_at)) s"
exit "$status"
