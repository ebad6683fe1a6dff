#!/usr/bin/env python3
"""Consistency checks of the deployment files that no schema can see.

  check_manifests.py refs FILE...        names that rendered objects refer to exist
  check_manifests.py parity HELM KUSTOMIZE   the kustomize base runs the chart's pod
  check_manifests.py versions ROOT       Cargo.toml, Chart appVersion, Dockerfile, k8s tags agree
  check_manifests.py context ROOT        the Docker build context holds the workspace, nothing more
  check_manifests.py runbooks ROOT       every alert: runbook anchor in docs/operations.md, tests that fire and not
  check_manifests.py values ROOT         every value in values.yaml is commented and in docs/deployment.md

Each prints what it checked and exits 1 with the problems.
"""

import re
import sys
import tomllib
from pathlib import Path

import yaml


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def done(what, problems):
    if problems:
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"{what}: ok")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- refs
def pod_template(doc):
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]
    if doc["kind"] == "Job":
        return doc["spec"]["template"]
    return None


def check_refs(files):
    problems = []
    for path in files:
        docs = load_docs(path)
        if not any(d.get("kind") == "Deployment" for d in docs):
            problems.append(f"{path}: no Deployment rendered")
        by = {}
        for d in docs:
            by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        where = Path(path).name
        for d in docs:
            name = f"{where}: {d['kind']}/{d['metadata']['name']}"
            tpl = pod_template(d)
            if tpl:
                spec = tpl["spec"]
                labels = tpl["metadata"].get("labels", {})
                if d["kind"] == "Deployment" and not matches(d["spec"]["selector"]["matchLabels"], labels):
                    problems.append(f"{name}: selector does not match its pod labels")
                sa = spec.get("serviceAccountName")
                if sa and sa != "default" and d["kind"] == "Deployment" and sa not in by.get("ServiceAccount", {}):
                    problems.append(f"{name}: ServiceAccount {sa} is not rendered")
                containers = spec.get("containers", []) + spec.get("initContainers", [])
                mounts = {v["name"] for v in spec.get("volumes", [])}
                for c in containers:
                    for ef in c.get("envFrom", []):
                        cm = (ef.get("configMapRef") or {}).get("name")
                        if cm and cm not in by.get("ConfigMap", {}):
                            problems.append(f"{name}: ConfigMap {cm} is not rendered")
                    for e in c.get("env", []):
                        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                        if ref and ref["name"] in by.get("Secret", {}):
                            data = by["Secret"][ref["name"]].get("data") or {}
                            data.update(by["Secret"][ref["name"]].get("stringData") or {})
                            if ref["key"] not in data:
                                problems.append(f"{name}: Secret {ref['name']} has no key {ref['key']}")
                    for m in c.get("volumeMounts", []):
                        if m["name"] not in mounts:
                            problems.append(f"{name}: container {c['name']} mounts unknown volume {m['name']}")
                    ports = {p.get("name") for p in c.get("ports", [])}
                    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                        port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                        if isinstance(port, str) and port not in ports:
                            problems.append(f"{name}: {probe} uses unknown port {port}")
            if d["kind"] in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
                sel = {
                    "Service": lambda x: x["spec"].get("selector"),
                    "PodDisruptionBudget": lambda x: x["spec"]["selector"]["matchLabels"],
                    "NetworkPolicy": lambda x: x["spec"]["podSelector"]["matchLabels"],
                }[d["kind"]](d)
                targets = [
                    dep for dep in by.get("Deployment", {}).values()
                    if matches(sel, dep["spec"]["template"]["metadata"].get("labels", {}))
                ]
                if len(targets) != 1:
                    problems.append(f"{name}: selector {sel} matches {len(targets)} Deployments, not 1")
                jobs = [j for j in by.get("Job", {}).values()
                        if matches(sel, j["spec"]["template"]["metadata"].get("labels", {}))]
                if jobs and d["kind"] != "NetworkPolicy":
                    problems.append(f"{name}: selector {sel} also matches the migration Job's pods")
            if d["kind"] == "ServiceMonitor":
                sel = d["spec"]["selector"].get("matchLabels", {})
                svcs = [s for s in by.get("Service", {}).values() if matches(sel, s["metadata"].get("labels", {}))]
                if len(svcs) != 1:
                    problems.append(f"{name}: selector matches {len(svcs)} Services, not 1")
                for ep in d["spec"]["endpoints"]:
                    for s in svcs:
                        if ep.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                            problems.append(f"{name}: endpoint port {ep.get('port')} is not a port of {s['metadata']['name']}")
            if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
                target = d["spec"]["scaleTargetRef"]["name"]
                if target not in by.get("Deployment", {}):
                    problems.append(f"{name}: scaleTargetRef {target} is not a rendered Deployment")
                elif "replicas" in by["Deployment"][target]["spec"]:
                    problems.append(f"{name}: Deployment {target} still sets replicas, which fights the autoscaler")
            if d["kind"] == "ScaledObject":
                for t in d["spec"]["triggers"]:
                    auth = (t.get("authenticationRef") or {}).get("name")
                    if auth and auth not in by.get("TriggerAuthentication", {}):
                        problems.append(f"{name}: authenticationRef {auth} is not rendered")
                    if t["type"] == "redis-streams":
                        md = t["metadata"]
                        if "lagCount" not in md or "pendingEntriesCount" in md:
                            problems.append(f"{name}: the redis-streams trigger must scale on lagCount only")
            if d["kind"] == "Deployment":
                grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
                for c in d["spec"]["template"]["spec"]["containers"]:
                    budget = 25
                    cms = [by["ConfigMap"][ef["configMapRef"]["name"]] for ef in c.get("envFrom", [])
                           if "configMapRef" in ef and ef["configMapRef"]["name"] in by.get("ConfigMap", {})]
                    for cm in cms:
                        budget = int(cm.get("data", {}).get("OBSERVABILITY_SHUTDOWN_TIMEOUT_SECS", budget))
                        if cm.get("data", {}).get("OBSERVABILITY_SKIP_MIGRATIONS") != "true":
                            problems.append(f"{name}: replicas must start with OBSERVABILITY_SKIP_MIGRATIONS=true")
                    sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
                    if grace < budget + sleep + 5:
                        problems.append(f"{name}: grace {grace}s < drain {budget}s + preStop {sleep}s + 5s")
                    envs = {e["name"]: e for e in c.get("env", [])}
                    field = ((envs.get("OBSERVABILITY_CONSUMER_NAME") or {}).get("valueFrom") or {}).get("fieldRef", {})
                    if field.get("fieldPath") != "metadata.name":
                        problems.append(f"{name}: OBSERVABILITY_CONSUMER_NAME must come from the pod name")
                    sc = c.get("securityContext") or {}
                    if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
                        problems.append(f"{name}: container {c['name']} needs a read-only root and no privilege escalation")
    done(f"references in {len(files)} rendered set(s)", problems)


# ---------------------------------------------------------------- parity
def check_parity(helm_file, kustomize_file):
    """The kustomize base must run the same pod as the chart's defaults."""
    problems = []

    def pieces(path):
        docs = load_docs(path)
        dep = next(d for d in docs if d["kind"] == "Deployment")
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and "OBSERVABILITY_STREAM_NAME" in d.get("data", {}))
        spec = dep["spec"]["template"]["spec"]
        return dep, cm, spec

    hdep, hcm, hspec = pieces(helm_file)
    kdep, kcm, kspec = pieces(kustomize_file)

    def strip_container(c):
        c = dict(c)
        c.pop("image", None)
        c.pop("envFrom", None)
        return c

    for field in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken", "volumes"):
        if hspec.get(field) != kspec.get(field):
            problems.append(f"pod {field}: chart {hspec.get(field)!r} != kustomize {kspec.get(field)!r}")
    for kind in ("containers", "initContainers"):
        hc = [strip_container(c) for c in hspec.get(kind, [])]
        kc = [strip_container(c) for c in kspec.get(kind, [])]
        if len(hc) != len(kc):
            problems.append(f"{kind}: chart has {len(hc)}, kustomize {len(kc)}")
            continue
        for a, b in zip(hc, kc):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    problems.append(f"{kind} {a.get('name')}.{key}: chart {a.get(key)!r} != kustomize {b.get(key)!r}")
    hs = [{k: v for k, v in t.items() if k != "labelSelector"} for t in hspec.get("topologySpreadConstraints", [])]
    ks = [{k: v for k, v in t.items() if k != "labelSelector"} for t in kspec.get("topologySpreadConstraints", [])]
    if hs != ks:
        problems.append(f"topologySpreadConstraints: chart {hs} != kustomize {ks}")
    if hdep["spec"].get("strategy") != kdep["spec"].get("strategy"):
        problems.append("Deployment strategy differs")
    if hcm["data"] != kcm["data"]:
        keys = sorted(set(hcm["data"]) | set(kcm["data"]))
        for k in keys:
            if hcm["data"].get(k) != kcm["data"].get(k):
                problems.append(f"ConfigMap {k}: chart {hcm['data'].get(k)!r} != kustomize {kcm['data'].get(k)!r}")
    done("kustomize base runs the chart's default pod", problems)


# ---------------------------------------------------------------- versions
def check_versions(root):
    root = Path(root)
    problems = []
    cargo = tomllib.loads((root / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((root / "helm/swisper-ingest/Chart.yaml").read_text())
    if str(chart["appVersion"]) != cargo:
        problems.append(f"Chart appVersion {chart['appVersion']} != Cargo.toml version {cargo}")
    docker = (root / "Dockerfile").read_text()
    for v in re.findall(r"^ARG VERSION=(\S+)$", docker, re.M):
        if v != cargo:
            problems.append(f"Dockerfile ARG VERSION={v} != Cargo.toml version {cargo}")
    if not re.findall(r"^ARG VERSION=", docker, re.M):
        problems.append("Dockerfile has no ARG VERSION")
    if 'org.opencontainers.image.version="${VERSION}"' not in docker:
        problems.append("Dockerfile does not label org.opencontainers.image.version from VERSION")
    for froms in re.findall(r"^ARG (?:RUST|RUNTIME)_IMAGE=(\S+)$", docker, re.M):
        if ":" not in froms or froms.endswith(":latest"):
            problems.append(f"base image {froms} is not pinned by tag")
    for k in ("k8s/base/kustomization.yaml", "k8s/overlays/production/kustomization.yaml"):
        doc = yaml.safe_load((root / k).read_text())
        for img in doc.get("images", []):
            if str(img.get("newTag")) != cargo:
                problems.append(f"{k}: image tag {img.get('newTag')} != Cargo.toml version {cargo}")
    done(f"versions agree on {cargo}", problems)


# ---------------------------------------------------------------- build context
def dockerignore_rules(text):
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((re.compile(regex + "$"), negate))
    return rules


def in_context(rules, rel):
    """Docker's rule: the last pattern matching the path or a parent decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for regex, negate in rules:
        if any(regex.match(c) for c in candidates):
            included = negate
    return included


def check_context(root):
    root = Path(root)
    problems = []
    rules = dockerignore_rules((root / ".dockerignore").read_text())
    files = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts[:1] and "target" not in p.relative_to(root).parts
    ]
    context = {f for f in files if in_context(rules, f)}
    needed = ["Cargo.toml", "Cargo.lock"]
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    members = manifest.get("workspace", {}).get("members", ["."])
    for member in members:
        for mdir in sorted(root.glob(member)) if any(ch in member for ch in "*?[") else [root / member]:
            rel = "" if mdir == root else mdir.relative_to(root).as_posix() + "/"
            needed.append(f"{rel}Cargo.toml")
            m = tomllib.loads((mdir / "Cargo.toml").read_text())
            for section in ("bin", "bench", "test", "example"):
                for target in m.get(section, []):
                    if "path" in target:
                        needed.append(rel + target["path"])
            lib = (m.get("lib") or {}).get("path")
            if lib:
                needed.append(rel + lib)
            for default in ("src/main.rs", "src/lib.rs", "build.rs"):
                if (mdir / default).exists():
                    needed.append(rel + default)
    needed += [f for f in files if f.startswith("migrations/")]
    if not any(f.startswith("migrations/") for f in files):
        problems.append("migrations/ is empty or missing: the binary embeds it")
    for f in needed:
        if f not in context:
            problems.append(f"{f} is needed by the build but left out of the context")
    for f in context:
        top = f.split("/")[0]
        if top in ("helm", "k8s", "deploy", "docs", ".git", "target") or f.startswith("tests/deploy/"):
            problems.append(f"{f} is in the build context but the build does not need it")
        if re.search(r"(^|/)\.env|\.pem$|\.key$", f):
            problems.append(f"{f} looks like a secret and is in the build context")
    done(f"build context: {len(context)} files, all {len(needed)} the build needs", problems)


# ---------------------------------------------------------------- runbooks and rule tests
def github_slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def check_runbooks(root):
    root = Path(root)
    problems = []
    rules = yaml.safe_load((root / "deploy/prometheus/swisper-ingest.rules.yaml").read_text())
    tests = yaml.safe_load((root / "deploy/prometheus/swisper-ingest.rules.test.yaml").read_text())
    ops = (root / "docs/operations.md").read_text()
    anchors = {github_slug(m) for m in re.findall(r"^#+ (.+)$", ops, re.M)}
    anchors |= set(re.findall(r'<a (?:name|id)="([^"]+)"', ops))
    fires, quiet = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    if not alerts:
        problems.append("no alerts in the rules file")
    for r in alerts:
        name = r["alert"]
        url = r.get("annotations", {}).get("runbook_url", "")
        anchor = url.split("#", 1)[1] if "#" in url else ""
        if anchor != name.lower():
            problems.append(f"{name}: runbook_url {url!r} does not end in #{name.lower()}")
        if anchor not in anchors:
            problems.append(f"{name}: docs/operations.md has no heading with anchor #{anchor}")
        for key in ("summary", "description"):
            if not r.get("annotations", {}).get(key):
                problems.append(f"{name}: no {key} annotation")
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{name}: severity label missing")
        if name not in fires:
            problems.append(f"{name}: no promtool test in which it fires")
        if name not in quiet:
            problems.append(f"{name}: no promtool test in which it must not fire")
        heading = f"\n## {name}\n"
        section = ops.split(heading, 1)[1].split("\n## ", 1)[0] if heading in ops else ""
        if "redis-cli" not in section and "psql" not in section and "kubectl" not in section:
            problems.append(f"{name}: its runbook section has no command to run")
    done(f"{len(alerts)} alerts with runbooks and firing/quiet tests", problems)


# ---------------------------------------------------------------- values documentation
def check_values(root):
    """A value is a key with a "# --" comment above it (helm-docs style); keys
    below such a key belong to it. Every key with a value on its line must be
    one, or belong to one; section keys (image:, config:) need no comment."""
    root = Path(root)
    problems = []
    lines = (root / "helm/swisper-ingest/values.yaml").read_text().splitlines()
    docs = (root / "docs/deployment.md").read_text()
    stack = []  # (indent, key, is a documented value)
    values = []
    block = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        documented = any(c.startswith("# --") for c in block)
        block = []
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(\s*(.*))?$", line)
        if not m or stripped.startswith("-"):
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group(2)
        inline = (m.group(4) or "").strip()
        owned = any(d for _, _, d in stack)
        path = ".".join([k for _, k, _ in stack] + [key])
        if documented and not owned:
            values.append(path)
        elif inline and not owned and not documented:
            problems.append(f"values.yaml {path}: no '# --' comment says what it does")
        stack.append((indent, key, documented))
    for path in values:
        if f"`{path}`" not in docs:
            problems.append(f"docs/deployment.md does not describe `{path}`")
    done(f"values.yaml: {len(values)} values commented and described in docs/deployment.md", problems)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "refs": lambda: check_refs(args),
        "parity": lambda: check_parity(*args),
        "versions": lambda: check_versions(*args),
        "context": lambda: check_context(*args),
        "runbooks": lambda: check_runbooks(*args),
        "values": lambda: check_values(*args),
    }[cmd]()


if __name__ == "__main__":
    main()
