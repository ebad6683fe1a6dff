#!/usr/bin/env bash
# The fault suite (docs/reliability.md): the real binary, built in release
# with the `fault-injection` crash hooks (and tests/exclusive/memory.rs: big entries,
# memory limits, delivery counts, poison holding), against the Redis and Postgres of
# scripts/services.sh (SERVICES_DIR, OBSERVABILITY_REDIS_URL, DATABASE_URL
# set, as scripts/test.sh does). Prints the measured figures at the end.
#
#   SWISPER_FAULT_BACKLOG   entries of the backlog scenario (1000000)
#   SWISPER_TEST_OUTAGE_SECS how long Postgres stays down (30)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${SERVICES_DIR:?run through scripts/test.sh, or export the variables of scripts/services.sh up DIR}"

figures=target/tmp/fault-figures.txt
mkdir -p target/tmp
rm -f "$figures"
export SWISPER_TEST_OUTAGE_SECS=${SWISPER_TEST_OUTAGE_SECS:-30}
status=0
# One test at a time: several of them stop the shared Redis or Postgres or
# load the two cores on purpose.
cargo test --release --features fault-injection --test exclusive \
  -- --test-threads=1 || status=$?
echo
echo "fault figures:"
cat "$figures" 2>/dev/null || echo "(none recorded)"
exit $status
