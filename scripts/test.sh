#!/usr/bin/env bash
# Runs every test of swisper-ingest on this machine: installs and starts Redis
# and PostgreSQL on loopback (scripts/services.sh, in a temporary folder that
# is removed at the end), then formatting and lint checks, the Rust unit,
# property and integration tests (among them tests/it/tls.rs, which starts its
# own TLS-only Redis and PostgreSQL with tests/tls/servers.sh), the fault
# tests, the real-SDK end-to-end tests, the offline deployment checks, the
# supply-chain checks with the SBOM (scripts/supply-chain.sh) and the quick
# start as an unprivileged user (tests/local/run.sh).
#
#   scripts/test.sh            everything
#   scripts/test.sh rust       only the Rust suites (fmt, clippy, cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

only=${1:-all}
export PATH="$HOME/.cargo/bin:$PATH"
# The fault tests stop and start the shared servers while the two cores are
# busy; a fast Postgres stop has taken more than the default 30 s there.
export SERVICES_TIMEOUT=${SERVICES_TIMEOUT:-120}

services_dir=$(mktemp -d /tmp/swisper-test.XXXXXX)
chmod 755 "$services_dir"
cleanup() { scripts/services.sh purge "$services_dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT
REDIS_AOF=1 scripts/services.sh up "$services_dir"
# shellcheck disable=SC1091
source "$services_dir/env"
export SERVICES_DIR="$services_dir"

passed=0
failed=0
failures=()
run_suite() {
  local name=$1
  shift
  echo "==> $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
  fi
}

run_suite "cargo fmt" cargo fmt --all -- --check
run_suite "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
run_suite "cargo test" cargo test --workspace --all-targets
if [[ $only == all ]]; then
  [[ -x tests/faults/run.sh ]] && run_suite "fault tests" tests/faults/run.sh
  [[ -x tests/sdk/run.sh ]] && run_suite "sdk end-to-end" tests/sdk/run.sh
  [[ -x tests/deploy/run.sh ]] && run_suite "deployment checks" tests/deploy/run.sh
  run_suite "supply chain (cargo-deny, SBOM)" scripts/supply-chain.sh
  [[ -x tests/local/run.sh ]] && run_suite "quick start without root" tests/local/run.sh
fi

echo
if ((failed > 0)); then
  echo "failed suites: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
((failed == 0))
