#!/usr/bin/env bash
# Supply-chain checks of swisper-ingest, and its SBOM:
#
#   scripts/supply-chain.sh
#
# 1. cargo-deny checks deny.toml's policy: licences from the allow-list,
#    crates from crates.io only, no wildcard versions (two versions of one
#    crate are reported, not failed).
#    Advisories are left out: `cargo deny check advisories` fetches the
#    RustSec database from GitHub, which CI cannot reach (docs/release.md says
#    when to run it).
# 2. cargo-cyclonedx writes a CycloneDX SBOM of the service to
#    target/sbom/swisper-ingest.cdx.json (not committed), which is then
#    checked: valid JSON, naming the swisper-ingest component with
#    Cargo.toml's version.
#
# Both tools are installed at pinned versions with `cargo install --locked`
# into ~/.cargo/bin the first time (a few minutes of compiling each; the time
# is printed) and reused while they report the pinned version. After that
# nothing here needs the network once the crates of Cargo.lock are in the
# local registry cache (any cargo build fetched them). Exit status 0 only when
# every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_DENY_VERSION=0.20.2
CARGO_CYCLONEDX_VERSION=0.5.9
sbom_dir=target/sbom

# install CRATE VERSION, unless `cargo install` already put that version
# there (cargo-cyclonedx's own --version says "cargo-cyclonedx-cyclonedx").
install() {
  local crate=$1 version=$2 started=$SECONDS
  if cargo install --list | grep -qxF "$crate v$version:" && command -v "$crate" >/dev/null; then
    return
  fi
  echo "installing $crate $version"
  cargo install --locked --quiet "$crate" --version "$version"
  echo "installed $crate $version in $((SECONDS - started)) s"
}

version=$(cargo metadata --format-version 1 --no-deps --locked --offline |
  python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "swisper-ingest"))')

install cargo-deny "$CARGO_DENY_VERSION"
install cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION"

echo "== cargo deny check licenses bans sources"
cargo deny --offline --locked check --hide-inclusion-graph licenses bans sources

echo "== SBOM (CycloneDX) of swisper-ingest $version"
# cargo-cyclonedx writes NAME.cdx.json beside each package's Cargo.toml;
# only the service's is kept (the load generator ships in no image).
strays=(swisper-ingest.cdx.json loadtests/swisper-loadtests.cdx.json)
trap 'rm -f "${strays[@]}"' EXIT
rm -rf "$sbom_dir" "${strays[@]}"
mkdir -p "$sbom_dir"
# Default features, as the image is built; the commit's time as the SBOM's
# timestamp, so that the same commit gives the same SBOM.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) CARGO_NET_OFFLINE=true \
  cargo cyclonedx --format json --spec-version 1.5 --quiet
mv swisper-ingest.cdx.json "$sbom_dir/"
python3 - "$sbom_dir/swisper-ingest.cdx.json" "$version" <<'EOF'
import json, sys
path, version = sys.argv[1], sys.argv[2]
with open(path) as f:
    bom = json.load(f)
assert bom.get("bomFormat") == "CycloneDX", f"{path}: bomFormat is {bom.get('bomFormat')!r}"
component = bom["metadata"]["component"]
assert component["name"] == "swisper-ingest", f"{path}: component is {component['name']!r}"
assert component["version"] == version, f"{path}: version {component['version']!r}, Cargo.toml says {version}"
names = {c["name"] for c in bom.get("components", [])}
assert "tokio-postgres" in names, f"{path}: dependencies missing (no tokio-postgres among {len(names)})"
print(f"{path}: CycloneDX {bom['specVersion']}, {component['name']} {component['version']}, {len(names)} components")
EOF
