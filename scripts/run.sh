#!/usr/bin/env bash
# The main job end to end on local defaults: checks first that everything it
# needs is there (else says what is missing and how to get it, and stops),
# starts Redis and PostgreSQL on loopback (scripts/services.sh; as root it
# installs them when missing, as anyone else they must be installed), builds and runs
# swisper-ingest, publishes a small sample workload of traces in the SDK's
# wire format, shows them stored in SwisperStudio's own tables
# (public.traces and public.observations; the database is standalone, so the
# service creates the studio's tables and the project on first sight), and
# says where to look. The service keeps
# running until Ctrl-C (then drains and exits); `--once` stops it right after.
# Redis and Postgres keep running for the next run either way.
#
#   scripts/run.sh [--once]
#   SWISPER_DEV_DIR   where Redis and Postgres keep their data
#                     (/tmp/swisper-ingest-dev as root, /tmp/swisper-ingest-dev-UID otherwise)
#   CARGO_TARGET_DIR  cargo's build folder (target)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

once=false
[[ ${1:-} == --once ]] && once=true
if ((EUID == 0)); then
  dir=${SWISPER_DEV_DIR:-/tmp/swisper-ingest-dev}
else
  dir=${SWISPER_DEV_DIR:-/tmp/swisper-ingest-dev-$EUID}
fi
target=${CARGO_TARGET_DIR:-target}

# True when version $1 is at least $2 (x.y or x.y.z).
version_at_least() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1) == "$2" ]]; }

# True when cc compiles and links a C program (gcc without libc6-dev does not).
c_links() {
  local tmp rc=0
  tmp=$(mktemp -d)
  printf 'int main(void) { return 0; }\n' >"$tmp/t.c"
  cc "$tmp/t.c" -o "$tmp/t" >/dev/null 2>&1 || rc=1
  rm -rf "$tmp"
  return "$rc"
}

# Appends to `missing` what the build needs: Rust at the crate's
# rust-version, and a C compiler (ring's build script and the linker).
check_build_tools() {
  local need have
  need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
  if ! command -v cargo >/dev/null || ! have=$(rustc --version 2>/dev/null); then
    missing+=("Rust $need or newer (cargo and rustc on PATH; Debian 12's own cargo is 1.63, too old):
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    then open a new shell")
  else
    have=${have#rustc }
    have=${have%% *}
    have=${have%%-*}
    version_at_least "$have" "$need" ||
      missing+=("Rust $need or newer (the crate's rust-version); rustc is $have: rustup update stable")
  fi
  if ! command -v cc >/dev/null; then
    missing+=("a C compiler, cc: apt-get install gcc libc6-dev")
  elif ! c_links; then
    missing+=("the C library for linking (cc cannot link a C program): apt-get install libc6-dev")
  fi
  local parent=$target
  [[ -e $parent ]] || parent=$(dirname "$parent")
  [[ -w $parent ]] || missing+=("a build folder $(id -un) can write: $target is not; use a checkout of your own or set CARGO_TARGET_DIR")
}

# Everything the run needs, checked before anything starts, so that a missing
# piece is named with how to get it (Debian 12 packages) instead of failing
# half-way.
check_prerequisites() {
  local missing=() packages
  check_build_tools
  command -v curl >/dev/null ||
    missing+=("curl (waits for the service's /readyz, reads /metrics): apt-get install curl")
  perl -MIO::Socket::INET -e 1 2>/dev/null ||
    missing+=("perl (picks a free port; in every Debian as perl-base): apt-get install perl-base")
  # As root services.sh installs the servers; anyone else needs them installed.
  if ! packages=$(scripts/services.sh check); then
    missing+=("the Redis and PostgreSQL servers, which $(id -un) cannot install (or run this script as root, which does):
      apt-get install -y --no-install-recommends ${packages//$'\n'/ }")
  fi
  if ((EUID != 0)); then
    command -v psql >/dev/null || missing+=("psql: apt-get install postgresql-client")
    [[ ! -e $dir || -O $dir ]] ||
      missing+=("a state folder of $(id -un)'s own: $dir belongs to another user; set SWISPER_DEV_DIR")
  fi
  ((${#missing[@]} == 0)) && return 0
  echo "run.sh: cannot start, missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
}

# True when a plain bind to 127.0.0.1:$1 succeeds; without $1, prints a free port.
free_port() {
  perl -MIO::Socket::INET -e '
    my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0] // 0, Proto => "tcp", Listen => 1)
      or exit 1;
    print $s->sockport, "\n" unless @ARGV;' "$@"
}

check_prerequisites
scripts/services.sh up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
psql_cmd() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d swisper_ingest "$@"; }

echo "==> building swisper-ingest (release)"
cargo build --release --quiet --bin swisper-ingest

port=8080
free_port "$port" || port=$(free_port)
export OBSERVABILITY_HTTP_ADDR=127.0.0.1:$port OBSERVABILITY_CONSUMER_NAME=local
log="$dir/service.log"
"$target/release/swisper-ingest" serve >"$log" 2>&1 &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
    echo "swisper-ingest drained and stopped (log: $log)"
  fi
}
trap stop EXIT
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
if ! curl -fs "http://127.0.0.1:$port/readyz" >/dev/null; then
  echo "swisper-ingest not ready after 30 s; last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
echo "==> swisper-ingest is running (pid $pid), http://127.0.0.1:$port"

# A LangGraph-like run per trace: an agent with four nodes, one of which
# fails, published as the SDK publishes it (times zone-less UTC).
echo "==> publishing 5 sample traces"
run_id=$(date +%s)
publish() { redis-cli -p "$REDIS_PORT" XADD observability:events '*' "$@" >/dev/null; }
for t in 1 2 3 4 5; do
  trace="sample-$run_id-$t"
  now=$(date -u +%Y-%m-%dT%H:%M:%S.%6N)
  ts=$(date +%s.%6N)
  publish event_type trace_start trace_id "$trace" project_id demo-project timestamp "$ts" \
    data "{\"name\":\"What is the weather in Zurich?\",\"user_id\":\"user-$t\",\"session_id\":\"chat-$t\",\"run_id\":\"$run_id\",\"timestamp\":\"$now\"}"
  publish event_type observation_start trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-agent" \
    data "{\"name\":\"swisper_agent\",\"type\":\"SPAN\",\"input\":{\"user_message\":\"What is the weather in Zurich?\"},\"start_time\":\"$now\"}"
  parent="$trace-agent"
  for node in classify_intent memory_lookup planner ui_renderer; do
    publish event_type observation_start trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-$node" \
      data "{\"name\":\"$node\",\"type\":\"SPAN\",\"parent_observation_id\":\"$parent\",\"input\":{\"messages\":[\"What is the weather in Zurich?\"]},\"start_time\":\"$now\"}"
    if [[ $node == memory_lookup && $t == 3 ]]; then
      publish event_type observation_error trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-$node" \
        data "{\"level\":\"ERROR\",\"error\":\"memory store timed out\",\"end_time\":\"$now\"}"
    else
      publish event_type observation_end trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-$node" \
        data "{\"output\":{\"result\":\"$node done\"},\"level\":\"DEFAULT\",\"end_time\":\"$now\"}"
    fi
  done
  publish event_type observation_end trace_id "$trace" project_id demo-project timestamp "$ts" observation_id "$trace-agent" \
    data "{\"output\":{\"answer\":\"Sunny, 21 degrees.\"},\"type\":\"AGENT\",\"level\":\"DEFAULT\",\"end_time\":\"$now\"}"
done

for _ in $(seq 1 100); do
  stored=$(psql_cmd -tAc "SELECT count(*) FROM public.observations WHERE trace_id LIKE 'sample-$run_id-%' AND end_time IS NOT NULL")
  [[ $stored == 25 ]] && break
  sleep 0.1
done
echo "==> stored: $stored of 25 observations"
if [[ $stored != 25 ]]; then
  echo "the sample traces were not all stored within 10 s; the service log: $log" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
# Times are the studio's: timestamp without time zone, in UTC.
psql_cmd -c "SELECT id, name, user_id, session_id, project_id, meta::jsonb ->> 'run_id' AS run_id, \"timestamp\"
             FROM public.traces WHERE id LIKE 'sample-$run_id-%' ORDER BY id"
psql_cmd -c "SELECT trace_id, name, type, level, parent_observation_id IS NOT NULL AS nested, status_message
             FROM public.observations WHERE trace_id = 'sample-$run_id-3' ORDER BY start_time, name"
dead=$(psql_cmd -tAc "SELECT count(*) FROM swisper_ingest.dead_letters")
echo "==> dead letters: $dead"
echo "==> metrics (http://127.0.0.1:$port/metrics):"
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^swisper_ingest_(events_total|group_lag|pending_entries|ready) ' || true
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^swisper_ingest_events_total' || true
# Without root Postgres asks TCP clients for the password in DIR/env.
password_hint=
((EUID == 0)) || password_hint="
                (source $dir/env first: it sets PGPASSWORD)"
cat <<MSG

Where to look:
  status JSON   curl http://127.0.0.1:$port/api/v1/observability/metrics
  metrics       curl http://127.0.0.1:$port/metrics
  database      psql -h 127.0.0.1 -p $PG_PORT -U postgres -d swisper_ingest$password_hint
                (the studio's public.traces, observations, projects; ours in schema swisper_ingest:
                 dead_letters, sdk_heartbeats, trace_state, observation_state)
  stream        redis-cli -p $REDIS_PORT XINFO GROUPS observability:events
  service log   $log
  publish more  OBSERVABILITY_REDIS_URL=$OBSERVABILITY_REDIS_URL, stream observability:events (see docs/event-format.md)
  servers       Redis and PostgreSQL keep running for the next run: scripts/services.sh down $dir
                stops them, scripts/services.sh purge $dir also deletes their data
MSG
if $once; then
  exit 0
fi
echo "swisper-ingest keeps running; Ctrl-C drains and stops it."
wait "$pid"
