#!/usr/bin/env python3
"""Consistency checks of the deployment files that no schema can see.

  check_manifests.py refs FILE...        names that rendered objects refer to exist
  check_manifests.py parity HELM KUSTOMIZE   the kustomize base runs the chart's pod
  check_manifests.py versions ROOT       Cargo.toml, Chart appVersion, Dockerfile, k8s tags agree
  check_manifests.py context ROOT        the Docker build context holds the workspace, nothing more
  check_manifests.py runbooks ROOT       every alert: runbook anchor in docs/operations.md, tests that fire and not
  check_manifests.py values ROOT         every value in values.yaml is commented and in docs/deployment.md
  check_manifests.py package ROOT        the chart's README has no links that break once packaged;
                                         Chart.yaml names home, sources and maintainers
  check_manifests.py pods FILE CHART_VALUES [VALUES]
                                         podAnnotations/podLabels reach every pod (service, migration Job,
                                         helm test), with the Job's and test pod's own over them;
                                         sidecars, commonLabels and extraObjects as the values say
  check_manifests.py settings ROOT FILE  the rendered ConfigMap carries the service's settings with the
                                         service's own defaults (src/), and the schema its ranges
  check_manifests.py connections FILE CHART_VALUES [VALUES]
                                         the rendered pods connect as the values say (URLs, Secrets, TLS
                                         files, KEDA, the helm test pod)

Each prints what it checked and exits 1 with the problems.
"""

import json
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
    if doc["kind"] == "Pod":
        return doc
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
                        if cm and not ef["configMapRef"].get("optional") and cm not in by.get("ConfigMap", {}):
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
                    if c["name"] == "swisper-ingest" and field.get("fieldPath") != "metadata.name":
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

    def by_name(items):
        # Order of env entries, mounts and volumes means nothing here (no
        # $(VAR) references); kustomize's patches put theirs first.
        return sorted(items or [], key=lambda x: x["name"])

    def strip_container(c):
        c = dict(c)
        c.pop("image", None)
        c.pop("envFrom", None)
        for key in ("env", "volumeMounts"):
            if key in c:
                c[key] = by_name(c[key])
        return c

    for field in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken", "volumes"):
        h, k = hspec.get(field), kspec.get(field)
        if field == "volumes":
            h, k = by_name(h), by_name(k)
        if h != k:
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
    # KEDA's connection, where both have one: the same trigger metadata and
    # the same Secret and ConfigMap references.
    def keda(path):
        docs = load_docs(path)
        so = next((d for d in docs if d["kind"] == "ScaledObject"), None)
        ta = next((d for d in docs if d["kind"] == "TriggerAuthentication"), None)
        if not so:
            return None
        refs = sorted((x["parameter"], x["name"], x["key"])
                      for x in (ta or {}).get("spec", {}).get("secretTargetRef") or [])
        return so["spec"]["triggers"][0]["metadata"], refs
    hk, kk = keda(helm_file), keda(kustomize_file)
    if (hk is None) != (kk is None):
        problems.append(f"KEDA: chart {'has' if hk else 'has no'} ScaledObject, kustomize {'has' if kk else 'has no'}")
    elif hk and hk != kk:
        problems.append(f"KEDA connection: chart {hk} != kustomize {kk}")
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
    # The runbooks' redis-cli and psql pods must work in every way the chart
    # connects: deploy/debug-pod.sh copies the service's env and mounts;
    # a pod that reads only URLs from the Secret fails way B and TLS.
    if "deploy/debug-pod.sh" not in ops:
        problems.append("docs/operations.md does not start its debug pods with deploy/debug-pod.sh")
    if re.search(r'"envFrom":\s*\[\s*\{\s*"secretRef"', ops):
        problems.append("docs/operations.md still has a debug pod that reads only the URLs from the Secret")
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


# ---------------------------------------------------------------- the packaged chart
def check_package(root):
    """A packaged chart carries its README alone: a relative link (to
    ../../docs/...) points nowhere on Artifact Hub or after helm pull."""
    root = Path(root)
    problems = []
    chart_dir = root / "helm/swisper-ingest"
    readme = (chart_dir / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", readme, re.M)
    links += re.findall(r'(?:href|src)="([^"]+)"', readme)
    for link in links:
        if not re.match(r"^(https?://|#|mailto:)", link):
            problems.append(f"README.md: link {link!r} is relative and breaks once the chart is packaged")
    ignored = (chart_dir / ".helmignore").read_text().split()
    if "README.md" in ignored:
        problems.append("README.md is in .helmignore")
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    if not str(chart.get("home", "")).startswith("https://"):
        problems.append("Chart.yaml: no https home")
    if not chart.get("sources") or not all(str(x).startswith("https://") for x in chart["sources"]):
        problems.append("Chart.yaml: sources missing or not https URLs")
    if not chart.get("maintainers") or not all(m.get("name") for m in chart["maintainers"]):
        problems.append("Chart.yaml: maintainers missing or without a name")
    done(f"packaged chart: README ({len(links)} links, all absolute), Chart.yaml home/sources/maintainers", problems)


# ---------------------------------------------------------------- connections
def merged_values(paths):
    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
        return a
    out = {}
    for p in paths:
        merge(out, yaml.safe_load(Path(p).read_text()) or {})
    return out


def check_connections(path, *value_files):
    """What each claim of the connection values means in the rendered pods,
    checked one by one: the URL's parts, the Secret and key of every
    password, that every TLS path the env or the URL names is a file that a
    read-only volume really mounts from the named Secret or ConfigMap key,
    the helm test pod's likeness to the service's, and KEDA's same view."""
    from urllib.parse import parse_qs, urlsplit

    v = merged_values(value_files)
    c = v["connection"]
    docs = load_docs(path)
    problems = []
    by = {}
    for d in docs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deps = list(by.get("Deployment", {}).values())
    if len(deps) != 1:
        done("connections", [f"{len(deps)} Deployments rendered, not 1"])
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    service = next(x for x in pod["containers"] if x["name"] == "swisper-ingest")

    def secret_name(kind):
        return c[kind].get("passwordSecret") or c.get("existingSecret") or dep["metadata"]["name"]

    url_secrets = {}  # where -> the Secret with the URLs, when not the release's

    def url_secret(where=None):
        return url_secrets.get(where) or c.get("existingSecret") or dep["metadata"]["name"]

    def env_of(container):
        return {e["name"]: e for e in container.get("env", [])}

    def secret_ref(entry):
        return ((entry or {}).get("valueFrom") or {}).get("secretKeyRef")

    def mounted_file(where, podspec, container, file_path):
        """The (kind, name, key) that file_path comes from, or a problem."""
        for m in container.get("volumeMounts", []):
            mdir = m["mountPath"].rstrip("/")
            if not file_path.startswith(mdir + "/"):
                continue
            rel = file_path[len(mdir) + 1:]
            if m.get("readOnly") is not True:
                problems.append(f"{where}: {m['mountPath']} is not mounted read-only")
            vol = next((x for x in podspec.get("volumes", []) if x["name"] == m["name"]), None)
            if not vol:
                problems.append(f"{where}: volume {m['name']} is not in the pod")
                return None
            proj = vol.get("projected")
            if not proj:
                problems.append(f"{where}: volume {m['name']} is not a projected Secret/ConfigMap volume")
                return None
            if proj.get("defaultMode") != 0o440:
                problems.append(f"{where}: volume {m['name']} defaultMode {proj.get('defaultMode')!r}, want 0440")
            for src in proj["sources"]:
                for kind in ("secret", "configMap"):
                    if kind in src:
                        for item in src[kind].get("items", []):
                            if item["path"] == rel:
                                return (kind, src[kind]["name"], item["key"])
            problems.append(f"{where}: {file_path}: no item of volume {m['name']} has path {rel}")
            return None
        problems.append(f"{where}: {file_path} is under no volume mount")
        return None

    def expect_file(where, podspec, container, file_path, want_kind, want_name, want_key):
        got = mounted_file(where, podspec, container, file_path)
        if got and got != (want_kind, want_name, want_key):
            problems.append(f"{where}: {file_path} comes from {got}, want {(want_kind, want_name, want_key)}")

    def credential(where, podspec, container, plain, file_var, want):
        """A way-B credential: from Secret/key `want` (or none), as the env
        `plain` (secretKeyRef) or, with credentialsFromFiles, as a file read
        only from a read-only mount under /var/run/secrets/swisper-ingest/,
        named by `file_var`; never both."""
        env = env_of(container)
        ref = secret_ref(env.get(plain))
        got_env = (ref["name"], ref["key"]) if ref else None
        path = (env.get(file_var) or {}).get("value")
        if c.get("credentialsFromFiles"):
            if plain in env:
                problems.append(f"{where}: {plain} is set although credentialsFromFiles mounts it as a file")
            if not want:
                if path:
                    problems.append(f"{where}: {file_var} {path!r} but no Secret key for it")
                return
            if not path:
                problems.append(f"{where}: no {file_var} although credentialsFromFiles is on")
                return
            if not path.startswith("/var/run/secrets/swisper-ingest/"):
                problems.append(f"{where}: {file_var} {path!r} is not under /var/run/secrets/swisper-ingest/")
            expect_file(where, podspec, container, path, "secret", *want)
        else:
            if path:
                problems.append(f"{where}: {file_var} set although credentialsFromFiles is off")
            if got_env != want:
                problems.append(f"{where}: {plain} from {got_env}, want Secret/key {want}")

    def ca_source(tls):
        ca = tls.get("ca", {})
        if ca.get("secretName"):
            return ("secret", ca["secretName"], ca["key"])
        if ca.get("configMapName"):
            return ("configMap", ca["configMapName"], ca["key"])
        return None

    def check_postgres(where, podspec, container):
        p = c["postgres"]
        env = env_of(container)
        db = env.get("DATABASE_URL")
        if not db:
            problems.append(f"{where}: no DATABASE_URL")
            return
        if not p.get("host"):
            ref = secret_ref(db)
            if not ref or (ref["name"], ref["key"]) != (url_secret(where), c["databaseUrlKey"]):
                problems.append(f"{where}: DATABASE_URL must come from Secret {url_secret(where)} key {c['databaseUrlKey']}, got {db}")
            if "PGPASSWORD" in env:
                problems.append(f"{where}: PGPASSWORD set although the URL comes whole from the Secret")
            files = {"sslrootcert": ca_source(p["tls"])}
            cert = p["tls"].get("clientCert", {})
            if cert.get("secretName"):
                files["sslcert"] = ("secret", cert["secretName"], cert["certKey"])
                files["sslkey"] = ("secret", cert["secretName"], cert["keyKey"])
            # Way A: the files are mounted where docs tell the URL to name them.
            names = {"sslrootcert": "ca.crt", "sslcert": "tls.crt", "sslkey": "tls.key"}
            for param, src in files.items():
                if src:
                    expect_file(where, podspec, container, f"/etc/swisper-ingest/tls/postgres/{names[param]}", *src)
            return
        url = urlsplit(db.get("value", ""))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.scheme not in ("postgres", "postgresql"):
            problems.append(f"{where}: DATABASE_URL scheme {url.scheme!r}")
        if url.password:
            problems.append(f"{where}: DATABASE_URL carries a password; it belongs in PGPASSWORD")
        if (url.hostname, url.port, url.path.lstrip("/"), url.username) != (
                p["host"].lower(), p["port"], p["database"], p["username"]):
            problems.append(f"{where}: DATABASE_URL {db['value']} does not match host/port/database/username of the values")
        if q.get("sslmode") != p["sslmode"]:
            problems.append(f"{where}: sslmode {q.get('sslmode')!r}, want {p['sslmode']!r}")
        want_pw = (secret_name("postgres"), p["passwordKey"]) if p.get("passwordKey") else None
        credential(where, podspec, container, "PGPASSWORD", "OBSERVABILITY_DATABASE_PASSWORD_FILE", want_pw)
        ca = ca_source(p["tls"])
        if bool(ca) != ("sslrootcert" in q):
            problems.append(f"{where}: sslrootcert {q.get('sslrootcert')!r} but CA source {ca}")
        if ca and "sslrootcert" in q:
            expect_file(where, podspec, container, q["sslrootcert"], *ca)
        cert = p["tls"].get("clientCert", {})
        if bool(cert.get("secretName")) != ("sslcert" in q and "sslkey" in q):
            problems.append(f"{where}: sslcert/sslkey {q.get('sslcert')!r}/{q.get('sslkey')!r} but client Secret {cert.get('secretName')!r}")
        if cert.get("secretName") and "sslcert" in q and "sslkey" in q:
            expect_file(where, podspec, container, q["sslcert"], "secret", cert["secretName"], cert["certKey"])
            expect_file(where, podspec, container, q["sslkey"], "secret", cert["secretName"], cert["keyKey"])

    def check_redis(where, podspec, container):
        r = c["redis"]
        t = r["tls"]
        env = env_of(container)
        u = env.get("OBSERVABILITY_REDIS_URL")
        if not u:
            problems.append(f"{where}: no OBSERVABILITY_REDIS_URL")
            return
        if r.get("host"):
            url = urlsplit(u.get("value", ""))
            want_scheme = "rediss" if t.get("enabled") else "redis"
            if url.scheme != want_scheme:
                problems.append(f"{where}: Redis URL scheme {url.scheme!r}, want {want_scheme!r}")
            if url.username or url.password:
                problems.append(f"{where}: Redis URL carries credentials; they belong in the env")
            if (url.hostname, url.port, url.path) != (r["host"].lower(), r["port"], f"/{r['database']}"):
                problems.append(f"{where}: Redis URL {u.get('value')} does not match host/port/database of the values")
            if r.get("usernameKey"):
                credential(where, podspec, container, "OBSERVABILITY_REDIS_USERNAME", "OBSERVABILITY_REDIS_USERNAME_FILE",
                           (secret_name("redis"), r["usernameKey"]))
            else:
                user = (env.get("OBSERVABILITY_REDIS_USERNAME") or {}).get("value")
                if (user or "") != (r.get("username") or ""):
                    problems.append(f"{where}: OBSERVABILITY_REDIS_USERNAME {user!r}, want {r.get('username')!r}")
            want_pw = (secret_name("redis"), r["passwordKey"]) if r.get("passwordKey") else None
            credential(where, podspec, container, "OBSERVABILITY_REDIS_PASSWORD", "OBSERVABILITY_REDIS_PASSWORD_FILE", want_pw)
        else:
            ref = secret_ref(u)
            if not ref or (ref["name"], ref["key"]) != (url_secret(), c["redisUrlKey"]):
                problems.append(f"{where}: OBSERVABILITY_REDIS_URL must come from Secret {url_secret()} key {c['redisUrlKey']}")
        ca = ca_source(t)
        ca_file = (env.get("OBSERVABILITY_REDIS_CA_FILE") or {}).get("value")
        if bool(ca) != bool(ca_file):
            problems.append(f"{where}: OBSERVABILITY_REDIS_CA_FILE {ca_file!r} but CA source {ca}")
        elif ca:
            expect_file(where, podspec, container, ca_file, *ca)
        cert = t.get("clientCert", {})
        cf = (env.get("OBSERVABILITY_REDIS_CLIENT_CERT_FILE") or {}).get("value")
        kf = (env.get("OBSERVABILITY_REDIS_CLIENT_KEY_FILE") or {}).get("value")
        if bool(cert.get("secretName")) != bool(cf and kf) or bool(cf) != bool(kf):
            problems.append(f"{where}: client cert/key files {cf!r}/{kf!r} but client Secret {cert.get('secretName')!r}")
        elif cert.get("secretName"):
            expect_file(where, podspec, container, cf, "secret", cert["secretName"], cert["certKey"])
            expect_file(where, podspec, container, kf, "secret", cert["secretName"], cert["keyKey"])
        insecure = (env.get("OBSERVABILITY_REDIS_TLS_INSECURE") or {}).get("value")
        if (insecure == "true") != bool(t.get("insecureSkipVerify")):
            problems.append(f"{where}: OBSERVABILITY_REDIS_TLS_INSECURE {insecure!r}, insecureSkipVerify {t.get('insecureSkipVerify')}")

    def check_env_from(where, container):
        got = container.get("envFrom", [])
        for want in v.get("extraEnvFrom") or []:
            if want not in got:
                problems.append(f"{where}: extraEnvFrom entry {want} missing from envFrom")

    # The service container, and the migration where it runs.
    check_redis("Deployment swisper-ingest", pod, service)
    check_postgres("Deployment swisper-ingest", pod, service)
    check_env_from("Deployment swisper-ingest", service)
    inits = pod.get("initContainers", [])
    names = [x["name"] for x in inits]
    want_inits = [x["name"] for x in v.get("initContainers") or []]
    if v["migrations"]["mode"] == "initContainer":
        want_inits.append("migrate")
    if names != want_inits:
        problems.append(f"init containers {names}, want {want_inits} (yours before the migration)")
    migrations = [("init container migrate", pod, x) for x in inits if x["name"] == "migrate"]
    for job in by.get("Job", {}).values():
        jpod = job["spec"]["template"]["spec"]
        where = f"Job {job['metadata']['name']}"
        if c.get("createSecret") and not c.get("existingSecret"):
            # A pre-install hook runs before the release's Secret exists: it reads its own copy.
            url_secrets[where] = f"{dep['metadata']['name']}-migrate"
            if url_secrets[where] not in by.get("Secret", {}):
                problems.append(f"{where}: its Secret copy {url_secrets[where]} is not rendered")
        migrations += [(where, jpod, x) for x in jpod["containers"]]
        job_inits = [x["name"] for x in jpod.get("initContainers", [])]
        if job_inits != [x["name"] for x in v.get("initContainers") or []]:
            problems.append(f"{where}: init containers {job_inits}, want initContainers {v.get('initContainers')}")
    if v["migrations"]["mode"] != "external" and not migrations:
        problems.append("no migration container rendered")
    for where, podspec, x in migrations:
        check_postgres(where, podspec, x)
        check_env_from(where, x)
        leaked = [n for n in env_of(x) if n.startswith("OBSERVABILITY_REDIS_")]
        if leaked:
            problems.append(f"{where}: the migration needs no Redis, but gets {leaked}")

    # The helm test pod: the same connection as the service, running check.
    tests = [d for d in by.get("Pod", {}).values()
             if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    if v["helmTest"]["enabled"]:
        if len(tests) != 1:
            problems.append(f"{len(tests)} helm test pods rendered, not 1")
        for t in tests:
            tspec = t["spec"]
            tc = tspec["containers"][0]
            where = f"test Pod {t['metadata']['name']}"
            want_args = ["check", "--json"] if v["helmTest"]["json"] else ["check"]
            if tc.get("args") != want_args or tc.get("command"):
                problems.append(f"{where}: runs {tc.get('command')} {tc.get('args')}, want the image's binary with {want_args}")
            if tc["image"] != service["image"]:
                problems.append(f"{where}: image {tc['image']} is not the service's {service['image']}")
            if tspec.get("restartPolicy") != "Never":
                problems.append(f"{where}: restartPolicy must be Never, or a failing check restarts forever")
            for key in ("env", "envFrom", "volumeMounts"):
                if tc.get(key) != service.get(key):
                    problems.append(f"{where}: {key} differs from the service container's")
            if [x["name"] for x in tspec.get("initContainers", [])] != [x["name"] for x in v.get("initContainers") or []]:
                problems.append(f"{where}: init containers differ from initContainers")
            if tspec.get("volumes") != pod.get("volumes"):
                problems.append(f"{where}: volumes differ from the Deployment's")
            for key in ("securityContext",):
                if tspec.get(key) != pod.get(key) or tc.get(key) != service.get(key):
                    problems.append(f"{where}: {key} differs from the service's")
            check_redis(where, tspec, tc)
            check_postgres(where, tspec, tc)
    elif tests:
        problems.append("helmTest.enabled is false but a test pod is rendered")

    # KEDA connects to the same Redis, with the same password and TLS.
    if v["keda"]["enabled"]:
        r = c["redis"]
        so = next(iter(by.get("ScaledObject", {}).values()), None)
        if not so:
            problems.append("keda.enabled but no ScaledObject")
        else:
            trig = next(t for t in so["spec"]["triggers"] if t["type"] == "redis-streams")
            md = trig["metadata"]
            ta_name = (trig.get("authenticationRef") or {}).get("name")
            ta = by.get("TriggerAuthentication", {}).get(ta_name, {"spec": {}})
            refs = {x["parameter"]: ("secret", x["name"], x["key"]) for x in ta["spec"].get("secretTargetRef") or []}
            refs.update({x["parameter"]: ("configMap", x["name"], x["key"]) for x in ta["spec"].get("configMapTargetRef") or []})
            want_tls = bool(r["tls"].get("enabled") or v["keda"]["redis"].get("enableTLS")
                            or (c.get("createSecret") and str(c.get("redisUrl", "")).startswith("rediss://")))
            if md.get("enableTLS") != str(want_tls).lower():
                problems.append(f"KEDA enableTLS {md.get('enableTLS')!r}, want {want_tls}")
            if (md.get("unsafeSsl") == "true") != bool(r["tls"].get("insecureSkipVerify")):
                problems.append(f"KEDA unsafeSsl {md.get('unsafeSsl')!r}, insecureSkipVerify {r['tls'].get('insecureSkipVerify')}")
            if "tls" in refs:
                problems.append("KEDA refuses tls in the TriggerAuthentication together with enableTLS in the trigger")
            if refs.get("ca") != ca_source(r["tls"]):
                problems.append(f"KEDA ca from {refs.get('ca')}, want {ca_source(r['tls'])}")
            cert = r["tls"].get("clientCert", {})
            want_cert = ("secret", cert["secretName"], cert["certKey"]) if cert.get("secretName") else None
            want_key = ("secret", cert["secretName"], cert["keyKey"]) if cert.get("secretName") else None
            if (refs.get("cert"), refs.get("key")) != (want_cert, want_key):
                problems.append(f"KEDA cert/key from {refs.get('cert')}/{refs.get('key')}, want {want_cert}/{want_key}")
            if r.get("host"):
                if md.get("address") != f"{r['host']}:{r['port']}":
                    problems.append(f"KEDA address {md.get('address')!r}, want {r['host']}:{r['port']}")
                if md.get("databaseIndex") != str(r["database"]):
                    problems.append(f"KEDA databaseIndex {md.get('databaseIndex')!r}, want {r['database']}")
                if (md.get("username") or "") != (r.get("username") or ""):
                    problems.append(f"KEDA username {md.get('username')!r}, want {r.get('username')!r}")
                want_user = ("secret", secret_name("redis"), r["usernameKey"]) if r.get("usernameKey") else None
                if refs.get("username") != want_user:
                    problems.append(f"KEDA username from {refs.get('username')}, want {want_user}")
                # The service's password: its env's Secret key, or the file's.
                svc_env = env_of(service)
                svc_pw = secret_ref(svc_env.get("OBSERVABILITY_REDIS_PASSWORD"))
                want_pw = ("secret", svc_pw["name"], svc_pw["key"]) if svc_pw else None
                pw_file = (svc_env.get("OBSERVABILITY_REDIS_PASSWORD_FILE") or {}).get("value")
                if pw_file:
                    want_pw = mounted_file("Deployment swisper-ingest", pod, service, pw_file)
                if refs.get("password") != want_pw:
                    problems.append(f"KEDA password from {refs.get('password')}, the service's from {want_pw}")
    done(f"connections in {Path(path).name} as the values say", problems)


# ---------------------------------------------------------------- pods, labels, extras
def sources(path):
    """(template source, object) of every rendered document, from helm's
    "# Source:" comments."""
    out = []
    text = Path(path).read_text(encoding="utf-8")
    for chunk in re.split(r"^---\s*$", text, flags=re.M):
        m = re.search(r"^# Source: (\S+)", chunk, re.M)
        doc = yaml.safe_load(chunk)
        if isinstance(doc, dict):
            out.append((m.group(1) if m else "", doc))
    return out


def check_pods(path, *value_files):
    v = merged_values(value_files)
    problems = []
    docs = sources(path)
    common = v.get("commonLabels") or {}
    extras = [d for src, d in docs if src.endswith("/extra-objects.yaml")]
    ours = [d for src, d in docs if not src.endswith("/extra-objects.yaml")]

    # commonLabels on every object of the chart, and on every pod template.
    for d in ours:
        name = f"{d['kind']}/{d['metadata']['name']}"
        labels = d["metadata"].get("labels") or {}
        for k, val in common.items():
            if labels.get(k) != val:
                problems.append(f"{name}: commonLabels {k}={val!r} missing (got {labels.get(k)!r})")

    # podAnnotations and podLabels on every pod, the pod kind's own over them.
    kinds = {"Deployment": {}, "Job": v["migrations"]["job"], "Pod": v["helmTest"]}
    pods = []
    for d in ours:
        if d["kind"] in ("Deployment", "Job"):
            pods.append((d["kind"], d["metadata"]["name"], d["spec"]["template"]))
        elif d["kind"] == "Pod":
            pods.append(("Pod", d["metadata"]["name"], d))
    want_kinds = {"Deployment"} | ({"Job"} if v["migrations"]["mode"] == "job" else set()) \
        | ({"Pod"} if v["helmTest"]["enabled"] else set())
    if {k for k, _, _ in pods} != want_kinds:
        problems.append(f"pods rendered: {sorted(k for k, _, _ in pods)}, want {sorted(want_kinds)}")
    for kind, name, tpl in pods:
        meta = tpl["metadata"]
        own = kinds[kind]
        want_ann = {**(v.get("podAnnotations") or {}), **(own.get("podAnnotations") or {})}
        want_lab = {**common, **(v.get("podLabels") or {}), **(own.get("podLabels") or {})}
        got_ann = meta.get("annotations") or {}
        got_lab = meta.get("labels") or {}
        for k, val in want_ann.items():
            if got_ann.get(k) != val:
                problems.append(f"{kind} {name} pod: annotation {k}={val!r} missing (got {got_ann.get(k)!r})")
        for k, val in want_lab.items():
            if not k.startswith("app.kubernetes.io/") and got_lab.get(k) != val:
                problems.append(f"{kind} {name} pod: label {k}={val!r} missing (got {got_lab.get(k)!r})")
        # sidecars: the service's pods only (a Job or test pod must end).
        spec = tpl["spec"]
        names = [c["name"] for c in spec["containers"]]
        want = {"Deployment": ["swisper-ingest"] + [c["name"] for c in v.get("sidecars") or []],
                "Job": ["migrate"], "Pod": ["check"]}[kind]
        if names != want:
            problems.append(f"{kind} {name}: containers {names}, want {want}")

    # extraObjects: each rendered once, through tpl.
    if len(extras) != len(v.get("extraObjects") or []):
        problems.append(f"{len(extras)} extraObjects rendered, want {len(v.get('extraObjects') or [])}")
    for d in extras:
        if "{{" in yaml.safe_dump(d):
            problems.append(f"extraObjects {d.get('kind')}/{d.get('metadata', {}).get('name')}: tpl left {{{{ }}}} unrendered")
    done(f"pods, labels and extras in {Path(path).name} as the values say "
         f"({len(pods)} pods, {len(ours)} objects, {len(extras)} extra)", problems)


def check_settings(root, path):
    """Settings the chart passes in the ConfigMap that the service declares
    with a numeric clap default: the chart's default must be the service's,
    and values.schema.json's range the service's."""
    root = Path(root)
    problems = []
    src = "\n".join(p.read_text(encoding="utf-8") for p in sorted((root / "src").rglob("*.rs")))
    declared = {}
    for m in re.finditer(r'env\s*=\s*"([A-Z0-9_]+)"\s*,\s*default_value_t\s*=\s*([0-9_ *]+?)\s*,'
                         r'(?:\s*value_parser\s*=\s*clap::value_parser!\(\w+\)\.range\(([0-9_ *]+)\.\.=([0-9_ *]+)\))?', src):
        num = lambda x: eval(x.replace("_", ""), {"__builtins__": {}}) if x else None  # noqa: E731 digits and * only
        declared[m.group(1)] = (num(m.group(2)), num(m.group(3)), num(m.group(4)))
    # Settings with a named value (clap value_enum): the chart's default is
    # the service's too.
    for m in re.finditer(r'env\s*=\s*"([A-Z0-9_]+)"\s*,\s*value_enum\s*,\s*default_value\s*=\s*"([\w-]+)"', src):
        declared[m.group(1)] = (m.group(2), None, None)
    schema = json.loads((root / "helm/swisper-ingest/values.schema.json").read_text())["properties"]["config"]["properties"]
    tpl = (root / "helm/swisper-ingest/templates/configmap.yaml").read_text()
    by_env = {m.group(1): m.group(2) for m in re.finditer(r"^\s+([A-Z0-9_]+): \{\{ \.Values\.config\.(\w+)\b", tpl, re.M)}
    cm = next(d for d in load_docs(path) if d["kind"] == "ConfigMap" and "OBSERVABILITY_STREAM_NAME" in d.get("data", {}))
    required = ["OBSERVABILITY_SDK_HEARTBEAT_SERIES"]
    for env in required:
        if env not in cm["data"]:
            problems.append(f"{env} is not in the rendered ConfigMap (no config value sets it)")
    checked = 0
    for env, value in cm["data"].items():
        if env not in declared:
            continue
        default, lo, hi = declared[env]
        checked += 1
        if str(default) != str(value):
            problems.append(f"{env}: chart default {value!r}, service default {default}")
        key = by_env.get(env)
        if key and lo is not None:
            rng = (schema.get(key, {}).get("minimum"), schema.get(key, {}).get("maximum"))
            if rng != (lo, hi):
                problems.append(f"{env}: values.schema.json config.{key} range {rng}, service range {(lo, hi)}")
    for env in required:
        if env not in declared:
            problems.append(f"{env}: no numeric clap default found in src/")
    done(f"{checked} settings with the service's defaults and ranges", problems)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "refs": lambda: check_refs(args),
        "parity": lambda: check_parity(*args),
        "versions": lambda: check_versions(*args),
        "context": lambda: check_context(*args),
        "runbooks": lambda: check_runbooks(*args),
        "values": lambda: check_values(*args),
        "connections": lambda: check_connections(*args),
        "pods": lambda: check_pods(*args),
        "settings": lambda: check_settings(*args),
        "package": lambda: check_package(*args),
    }[cmd]()


if __name__ == "__main__":
    main()
