// Validates the custom resources of rendered manifests against their CRD
// models (kubernetes-validate skips CRDs): ServiceMonitor and PrometheusRule
// (@kubernetes-models/prometheus-operator), ScaledObject and
// TriggerAuthentication (@kubernetes-models/keda).
//
// Two checks per resource:
//   1. the model's own .validate(): types, required fields, enums, patterns;
//   2. unknown and missing fields, which the models let through: every key is
//      looked up in the model's TypeScript interface (its .d.ts), recursively,
//      so a misspelt optional field (pollingIntervl) fails too, and so does a
//      required one left out.
//
// Usage: SWISPER_NODE_MODULES=/path/node_modules node validate_crds.mjs FILE...
// Prints one line per custom resource; exits 1 on any problem.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.SWISPER_NODE_MODULES;
if (!modules || !existsSync(modules)) {
  console.error("validate_crds: set SWISPER_NODE_MODULES to the tools' node_modules");
  process.exit(2);
}
const load = (rel) => import(pathToFileURL(join(modules, rel)).href);

const yaml = (await load("js-yaml/dist/js-yaml.mjs")).default;
const keda = await load("@kubernetes-models/keda/keda.sh/v1alpha1/index.js");
const promv1 = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": [promv1.ServiceMonitor, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.d.ts", "IServiceMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": [promv1.PrometheusRule, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.d.ts", "IPrometheusRule"],
  "keda.sh/v1alpha1/ScaledObject": [keda.ScaledObject, "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.d.ts", "IScaledObject"],
  "keda.sh/v1alpha1/TriggerAuthentication": [keda.TriggerAuthentication, "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.d.ts", "ITriggerAuthentication"],
};

// ---- a small reader of the models' .d.ts interfaces -----------------------
const parsed = new Map();

function parseDts(file) {
  if (parsed.has(file)) return parsed.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{([^}]*)\} from "([^"]+)";$/gm)) {
    let target = m[2];
    if (target.startsWith(".")) target = join(dirname(file), target);
    else target = join(modules, target);
    target = target.replace(/\.js$/, "") + ".d.ts";
    for (const name of m[1].split(",").map((s) => s.trim()).filter(Boolean)) {
      const [orig, alias] = name.split(/\s+as\s+/);
      imports.set(alias || orig, { file: target, name: orig });
    }
  }
  const aliases = new Map();
  for (const m of text.matchAll(/^export type \{([^}]*)\};$/gm)) {
    for (const part of m[1].split(",").map((s) => s.trim()).filter(Boolean)) {
      const [orig, alias] = part.split(/\s+as\s+/);
      if (alias) aliases.set(alias, orig);
    }
  }
  for (const m of text.matchAll(/^export type (\w+) = (\w+);$/gm)) aliases.set(m[1], m[2]);
  const interfaces = new Map();
  for (const m of text.matchAll(/^export interface (\w+)(?: extends [^{]+)? \{\n([\s\S]*?)^\}/gm)) {
    const props = new Map();
    for (const line of m[2].split("\n")) {
      const p = line.match(/^ {4}"([^"]+)"(\??): (.*?);?$/);
      if (p) props.set(p[1], { type: p[3], required: p[2] !== "?" });
    }
    interfaces.set(m[1], props);
  }
  const result = { imports, aliases, interfaces };
  parsed.set(file, result);
  return result;
}

// Where a type named in `file` is defined: { file, props } or null (leaf).
function typeOf(file, type) {
  const d = parseDts(file);
  if (d.interfaces.has(type)) return { file, props: d.interfaces.get(type) };
  if (d.aliases.has(type)) return typeOf(file, d.aliases.get(type));
  if (d.imports.has(type)) {
    const i = d.imports.get(type);
    if (!existsSync(i.file)) return null;
    return typeOf(i.file, i.name);
  }
  return null;
}

function unknownFields(value, file, props, path, problems) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, prop] of props) {
    if (prop.required && !(key in value)) problems.push(`${path}.${key}: required field missing`);
  }
  for (const [key, child] of Object.entries(value)) {
    if (!props.has(key)) {
      problems.push(`${path}.${key}: unknown field`);
      continue;
    }
    const type = props.get(key).type.trim();
    if (type.startsWith("{")) continue; // a free-form map
    const arr = type.match(/^Array<(\w+)>$/);
    if (arr && Array.isArray(child)) {
      const t = typeOf(file, arr[1]);
      if (t) child.forEach((c, i) => unknownFields(c, t.file, t.props, `${path}.${key}[${i}]`, problems));
      continue;
    }
    if (/^\w+$/.test(type) && child && typeof child === "object" && !Array.isArray(child)) {
      const t = typeOf(file, type);
      if (t) unknownFields(child, t.file, t.props, `${path}.${key}`, problems);
    }
  }
}

// ---- main -----------------------------------------------------------------
let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  let docs;
  try {
    docs = yaml.loadAll(readFileSync(file, "utf8")).filter((d) => d && typeof d === "object");
  } catch (e) {
    console.error(`${file}: not YAML: ${e.message}`);
    failures++;
    continue;
  }
  for (const doc of docs) {
    const key = `${doc.apiVersion}/${doc.kind}`;
    const group = String(doc.apiVersion || "").split("/")[0];
    if (!MODELS[key]) {
      if (group.endsWith("coreos.com") || group.endsWith("keda.sh")) {
        console.error(`${file}: ${key} has no model here: unknown kind or version`);
        failures++;
      }
      continue;
    }
    const [Model, dts, iface] = MODELS[key];
    const name = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    const problems = [];
    try {
      new Model(doc).validate();
    } catch (e) {
      problems.push(e.message);
    }
    const props = parseDts(join(modules, dts)).interfaces.get(iface);
    if (!props) problems.push(`cannot read the model interface ${iface}`);
    else unknownFields(doc, join(modules, dts), props, doc.kind, problems);
    checked++;
    if (problems.length) {
      failures++;
      console.error(`FAIL ${name}\n  ${problems.join("\n  ")}`);
    } else {
      console.log(`valid ${name}`);
    }
  }
}
console.log(`custom resources: ${checked} checked, ${failures} invalid`);
process.exit(failures ? 1 : 0);
