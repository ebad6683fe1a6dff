#!/usr/bin/env python3
"""Runs deploy/debug-pod.sh (the runbooks' redis-cli and psql pods) against a
rendered Deployment, without a cluster, and checks that the tools inside
connect as the service does, for every way the values connect.

A stub kubectl returns the rendered Deployment; the script prints the pod
overrides (--print). The pod is then imitated: its env resolved (Secret keys
become "secret:NAME/KEY", as do the files a projected volume mounts, under a
scratch root), and the pod's command run with stub redis-cli and psql that
record their arguments, REDISCLI_AUTH and PGPASSWORD. Expected: --tls for a
rediss:// URL, --cacert/--cert/--key naming the mounted files from the right
Secret or ConfigMap, --user, the password from the right Secret key (env or
file) and never on the command line, psql on DATABASE_URL with PGPASSWORD.

Usage: check_debug_pod.py REPO RENDERED.yaml CHART_VALUES [VALUES]
"""

import base64
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from check_manifests import load_docs, merged_values  # noqa: E402


def stub(path, body):
    path.write_text("#!/usr/bin/env bash\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def main():
    repo, rendered, *value_files = sys.argv[1:]
    c = merged_values(value_files)["connection"]
    by = {}
    for d in load_docs(rendered):
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    dep = next(iter(by["Deployment"].values()))
    with tempfile.TemporaryDirectory() as scratch:
        calls, problems = imitate_pod(repo, Path(scratch), dep, by, c)
        if not problems:
            problems = check_redis_cli(calls.get("redis-cli"), c, dep) + check_psql(calls.get("psql"), c, dep)
    if problems:
        for x in problems:
            print(f"  {x}", file=sys.stderr)
        print(f"debug pods of {Path(rendered).name}: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"debug pods of {Path(rendered).name}: redis-cli and psql connect as the service")


def imitate_pod(repo, tmp, dep, by, c):
    """Prints the overrides with a stub kubectl, lays out the pod's files
    under tmp/root, runs the pod's command with its env resolved; returns the
    recorded redis-cli and psql calls, and the problems on the way."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (tmp / "deploy.json").write_text(json.dumps(dep), encoding="utf-8")
    stub(bin_dir / "kubectl", f'[[ " $* " == *" get deployment "* ]] && exec cat {tmp / "deploy.json"}\nexit 1\n')
    rec = tmp / "calls.jsonl"
    for tool in ("redis-cli", "psql"):
        stub(bin_dir / tool, f"""python3 -c 'import json, os, sys; print(json.dumps({{"tool": "{tool}", "argv": sys.argv[1:],
  "REDISCLI_AUTH": os.environ.get("REDISCLI_AUTH"), "PGPASSWORD": os.environ.get("PGPASSWORD")}}))' "$@" >>{rec}
""")
    out = subprocess.run([f"{repo}/deploy/debug-pod.sh", "--print", "redis", "-n", "obs", "-d", dep["metadata"]["name"]],
                         env={**os.environ, "KUBECTL": str(bin_dir / "kubectl")}, capture_output=True, text=True)
    if out.returncode != 0:
        return {}, [f"debug-pod.sh --print failed: {out.stderr}"]
    ctr = json.loads(out.stdout)["spec"]["containers"][0]
    mounts = lay_out_files(json.loads(out.stdout)["spec"], ctr, tmp / "root")

    def relocate(value):
        for mp, real in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            value = value.replace(mp + "/", real + "/")
        return value

    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    for ef in ctr.get("envFrom", []):
        env.update((by.get("ConfigMap", {}).get((ef.get("configMapRef") or {}).get("name")) or {}).get("data") or {})
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = relocate(str(e["value"]))
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_value(by, c, ref["name"], ref["key"])
        else:
            env[e["name"]] = "x"
    cmd = ctr["command"] + ["bash", "-c", 'redis-cli -u "$OBSERVABILITY_REDIS_URL" PING; psql "$DATABASE_URL" -c "select 1"']
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0 or not rec.exists():
        return {}, [f"the pod's command failed: {run.stdout}{run.stderr}"]
    calls = {x["tool"]: x for x in map(json.loads, rec.read_text().splitlines())}
    # Read the files the tools were pointed at while they exist.
    for call in calls.values():
        argv = call["argv"]
        call["files"] = {flag: read(argv[argv.index(flag) + 1]) for flag in ("--cacert", "--cert", "--key") if flag in argv}
        if call["tool"] == "psql" and argv and "?" in argv[0]:
            q = dict(x.split("=", 1) for x in argv[0].split("?", 1)[1].split("&"))
            call["files"] = {k: read(q[k]) for k in ("sslrootcert", "sslcert", "sslkey") if k in q}
    return calls, []


def lay_out_files(spec, ctr, root):
    """Every item of a projected volume as root/<mountPath>/<path>, holding
    "<secret|configMap>:<name>/<key>"; returns mountPath -> its place."""
    vols = {x["name"]: x for x in spec.get("volumes", [])}
    mounts = {}
    for m in ctr.get("volumeMounts", []):
        proj = vols.get(m["name"], {}).get("projected")
        if not proj:
            continue
        mounts[m["mountPath"]] = str(root) + m["mountPath"]
        for src in proj["sources"]:
            for kind in ("secret", "configMap"):
                for item in (src.get(kind) or {}).get("items", []):
                    f = root / m["mountPath"].lstrip("/") / item["path"]
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(f"{kind}:{src[kind]['name']}/{item['key']}", encoding="utf-8")
    return mounts


def secret_value(by, c, name, key):
    """A Secret key's value: the rendered Secret's, a URL as the docs ask
    for in an existing Secret, else "secret:NAME/KEY"."""
    sec = by.get("Secret", {}).get(name)
    if sec and key in (sec.get("data") or {}):
        return base64.b64decode(sec["data"][key]).decode()
    if key == c["redisUrlKey"]:
        scheme = "rediss" if c["redis"]["tls"]["enabled"] else "redis"
        return f"{scheme}://:urlpass@redis.example:6379/0"
    if key == c["databaseUrlKey"]:
        return "postgres://u:urlpass@pg.example:5432/db"
    return f"secret:{name}/{key}"


def read(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return f"unreadable {path}"


def password_secret(c, kind, dep):
    return c[kind].get("passwordSecret") or c.get("existingSecret") or dep["metadata"]["name"]


def check_redis_cli(call, c, dep):
    if not call:
        return ["redis-cli was not run"]
    problems = []
    r, argv, files = c["redis"], call["argv"], call["files"]
    url = argv[argv.index("-u") + 1] if "-u" in argv else ""
    if url.startswith("rediss://") != ("--tls" in argv):
        problems.append(f"redis-cli: URL {url!r} but --tls {'given' if '--tls' in argv else 'missing'}")
    if r["tls"]["enabled"] and not url.startswith("rediss://"):
        problems.append(f"redis-cli: TLS is on but the URL is {url!r}")
    ca = r["tls"]["ca"]
    want_ca = (f"secret:{ca['secretName']}/{ca['key']}" if ca.get("secretName")
               else f"configMap:{ca['configMapName']}/{ca['key']}" if ca.get("configMapName") else None)
    if files.get("--cacert") != want_ca:
        problems.append(f"redis-cli --cacert file holds {files.get('--cacert')!r}, want {want_ca!r}")
    cert = r["tls"]["clientCert"]
    for flag, key in (("--cert", cert["certKey"]), ("--key", cert["keyKey"])):
        want = f"secret:{cert['secretName']}/{key}" if cert.get("secretName") else None
        if files.get(flag) != want:
            problems.append(f"redis-cli {flag} file holds {files.get(flag)!r}, want {want!r}")
    if ("--insecure" in argv) != bool(r["tls"].get("insecureSkipVerify")):
        problems.append("redis-cli --insecure does not match insecureSkipVerify")
    secret = password_secret(c, "redis", dep)
    want_user, want_pw = None, None
    if r.get("host"):
        want_user = f"secret:{secret}/{r['usernameKey']}" if r.get("usernameKey") else (r.get("username") or None)
        want_pw = f"secret:{secret}/{r['passwordKey']}" if r.get("passwordKey") else None
    got_user = argv[argv.index("--user") + 1] if "--user" in argv else None
    if got_user != want_user:
        problems.append(f"redis-cli --user {got_user!r}, want {want_user!r}")
    if call["REDISCLI_AUTH"] != want_pw:
        problems.append(f"redis-cli REDISCLI_AUTH {call['REDISCLI_AUTH']!r}, want {want_pw!r} (way A: in the URL)")
    if call["REDISCLI_AUTH"] and any(call["REDISCLI_AUTH"] in a for a in argv):
        problems.append(f"redis-cli: the password on the command line: {argv}")
    return problems


def check_psql(call, c, dep):
    if not call:
        return ["psql was not run"]
    problems = []
    p = c["postgres"]
    if not call["argv"] or not call["argv"][0].startswith(("postgres://", "postgresql://")):
        problems.append(f"psql: not run on DATABASE_URL: {call['argv']}")
    want_pw = None
    if p.get("host") and p.get("passwordKey"):
        want_pw = f"secret:{password_secret(c, 'postgres', dep)}/{p['passwordKey']}"
    if call["PGPASSWORD"] != want_pw:
        problems.append(f"psql: PGPASSWORD {call['PGPASSWORD']!r}, want {want_pw!r}")
    for param, content in call["files"].items():
        if content.startswith("unreadable"):
            problems.append(f"psql: {param} {content}: not a mounted file")
    return problems


if __name__ == "__main__":
    main()
