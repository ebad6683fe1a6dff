#!/usr/bin/env bash
# Where Postgres spends its time, statement by statement: each given build
# of swisper-ingest takes a steady load (RATE events/s for SECS s, the
# loadgen workload of bench.sh's scenario 2) or drains a backlog (BACKLOG
# events, scenario 1's seed-format workload) into a fresh database, and
# pg_stat_statements' totals are printed per build, with time per row and
# planning time (the service's statements are not prepared: planned per call).
# Starts its own Redis and PostgreSQL on loopback (scripts/services.sh, in a
# temp folder removed at the end); builds run one after the other.
#
#   loadtests/statements.sh [BIN ...]   default: target/release/swisper-ingest
#   RATE=5000 SECS=40 (defaults)   BACKLOG=200000 (a drain instead)
#   AUTOVACUUM=off: no autovacuum during the runs (its workers start on a
#   timer, and a run they overlap pays for them)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
RATE=${RATE:-5000} SECS=${SECS:-40} BACKLOG=${BACKLOG:-} AUTOVACUUM=${AUTOVACUUM:-on}
bins=("$@")
((${#bins[@]})) || bins=(target/release/swisper-ingest)
cargo build --release --quiet -p swisper-loadtests
loadgen=target/release/loadgen

# shellcheck source=loadtests/lib/services.sh
source loadtests/lib/services.sh
start_services statements
psql "$admin" -qc "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
scripts/services.sh stop-postgres "$work/services" && scripts/services.sh start-postgres "$work/services"
# Known once the library is loaded.
psql "$admin" -qc "ALTER SYSTEM SET pg_stat_statements.track_planning = on" \
  -c "ALTER SYSTEM SET autovacuum = $AUTOVACUUM" -c "SELECT pg_reload_conf()"

for bin in "${bins[@]}"; do
  psql "$admin" -qc "DROP DATABASE IF EXISTS statements" -c "CREATE DATABASE statements"
  url=${DATABASE_URL%/*}/statements
  psql "$url" -qc "CREATE EXTENSION pg_stat_statements"
  DATABASE_URL=$url "$bin" migrate >/dev/null
  redis-cli -u "$OBSERVABILITY_REDIS_URL" DEL statements >/dev/null
  if [[ -n $BACKLOG ]]; then
    "$loadgen" publish --stream statements --events "$BACKLOG" --seed 42 --in-flight 200 --compression never \
      --cache-dir target/loadgen-cache --summary "$work/publish.json" >/dev/null 2>>"$work/loadgen.log"
    # The drain starts with the service: count from before it.
    psql "$url" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
  fi
  serve "$bin" "$url" statements
  if [[ -n $BACKLOG ]]; then
    what="a drain of $BACKLOG events"
  else
    what="$RATE events/s for $SECS s"
    psql "$url" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
    "$loadgen" publish --stream statements --rate "$RATE" --duration "$SECS" --seed 7 \
      --in-flight $((RATE * 2 / 11 + 1)) --cache-dir target/loadgen-cache --summary "$work/publish.json" >/dev/null 2>>"$work/loadgen.log"
  fi
  "$loadgen" verify --database-url "$url" --group statements --summary "$work/publish.json" --timeout 120 \
    >/dev/null 2>>"$work/loadgen.log"
  kill -TERM "$svc_pid"; wait "$svc_pid" 2>/dev/null || true; svc_pid=
  echo "## $bin: $what"
  psql "$url" -P pager=off -c "
    SELECT calls, round(total_plan_time) AS plan_ms, round(total_exec_time) AS exec_ms, rows,
           round((1000 * total_exec_time / nullif(rows, 0))::numeric, 1) AS us_per_row,
           left(regexp_replace(query, '\s+', ' ', 'g'), 60) AS statement
    FROM pg_stat_statements WHERE total_exec_time + total_plan_time > 50 ORDER BY total_exec_time DESC"
  psql "$url" -Atc "SELECT 'all statements: ' || round(sum(total_exec_time)) || ' ms executing, '
                           || round(sum(total_plan_time)) || ' ms planning' FROM pg_stat_statements"
  # What the rows take on disk, and how their long values are compressed:
  # the same rows cost Postgres more when they end up in more pages.
  psql "$url" -Atc "SELECT 'sizes: ' || string_agg(format('%s %s (heap %s, toast %s, indexes %s)', c.relname,
                             pg_size_pretty(pg_total_relation_size(c.oid)), pg_size_pretty(pg_relation_size(c.oid)),
                             pg_size_pretty(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)),
                             pg_size_pretty(pg_indexes_size(c.oid))), '; ' ORDER BY c.relname)
                    FROM pg_class c WHERE c.oid IN ('public.observations'::regclass, 'public.traces'::regclass,
                                                    'swisper_ingest.observation_state'::regclass)" \
       -c "SELECT 'autovacuum / autoanalyze runs: ' || string_agg(format('%s %s/%s', relname, autovacuum_count,
                                                                       autoanalyze_count), ', ' ORDER BY relname)
           FROM pg_stat_user_tables WHERE autovacuum_count + autoanalyze_count > 0" \
       -c "SELECT 'compression of observations.output: ' || string_agg(m || ' ' || n, ', ')
           FROM (SELECT coalesce(pg_column_compression(output), 'none') AS m, count(*) AS n
                 FROM public.observations GROUP BY 1) t"
done
