// The custom resources of deploy/ against the upstream API types as packaged on npm
// (@kubernetes-models/*, pinned in scripts/versions.env, installed by
// scripts/test.sh; run by scripts/check_deploy.py): generated from the projects' own Go API types (Envoy Gateway,
// Gateway API, Traefik) or published CRDs (Istio), they check every field's type, enum
// and required fields. They let unknown fields through, which the subset schemas of
// scripts/check_deploy.py refuse: the two checks together leave neither gap.
//
//   node scripts/check_crd_models.mjs MODULES_DIR DOCUMENTS.json
//
// DOCUMENTS.json: [{ "path": ..., "document": {...} }, ...] (check_deploy.py's to_json).
// Every custom resource is either checked here or named in NO_PACKAGE with the reason;
// anything else fails.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, documentsPath] = process.argv.slice(2);

// API group -> the npm package with its types.
const PACKAGES = {
  "gateway.envoyproxy.io": "@kubernetes-models/envoy-gateway",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "security.istio.io": "@kubernetes-models/istio",
  "install.istio.io": "@kubernetes-models/istio",
  "traefik.io": "@kubernetes-models/traefik",
};
// Groups without a packaged schema: the subset schema is their only check.
const NO_PACKAGE = {
  "gateway.kgateway.dev": "no npm or PyPI package of kgateway's API types or CRDs found",
};
// The packaged Gateway API types are the standard channel's: their HTTPRoute filter
// `type` enum lacks the experimental ExternalAuth (the externalAuth field itself is
// typed and checked). That one enum error, on a filter that is an ExternalAuth filter,
// is the only error tolerated.
function tolerated(document, error) {
  const match = /^\/spec\/rules\/(\d+)\/filters\/(\d+)\/type$/.exec(error.instancePath);
  if (!match || error.keyword !== "enum" || document.kind !== "HTTPRoute") return false;
  const filter = document.spec.rules[Number(match[1])].filters[Number(match[2])];
  return filter.type === "ExternalAuth";
}

async function model(apiVersion, kind) {
  const [group, version] = apiVersion.split("/");
  const pkg = PACKAGES[group];
  const file = join(modulesDir, "node_modules", pkg, group, version, `${kind}.js`);
  const module = await import(pathToFileURL(file).href);
  return { pkg, Model: module[kind] };
}

const documents = JSON.parse(readFileSync(documentsPath, "utf8"));
let failures = 0;
let checked = 0;
for (const { path, document } of documents) {
  const { apiVersion, kind } = document;
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  const name = `${kind}/${document.metadata?.name ?? "?"}`;
  if (!group.includes(".") || group.endsWith(".k8s.io") && !PACKAGES[group]) continue; // built-in
  if (NO_PACKAGE[group]) {
    console.log(`NOTE  ${path}: ${name} (${apiVersion}): ${NO_PACKAGE[group]}; subset schema only`);
    continue;
  }
  if (!PACKAGES[group]) {
    console.log(`ERROR ${path}: ${name} (${apiVersion}): no packaged types for this group`);
    failures++;
    continue;
  }
  let loaded;
  try {
    loaded = await model(apiVersion, kind);
  } catch (error) {
    console.log(`ERROR ${path}: ${name} (${apiVersion}): not in its package (${error.message})`);
    failures++;
    continue;
  }
  const { pkg, Model } = loaded;
  let errors = [];
  try {
    new Model(document).validate();
  } catch (error) {
    if (!Array.isArray(error.errors)) throw error;
    errors = error.errors;
  }
  const real = errors.filter((error) => !tolerated(document, error));
  for (const error of real) {
    console.log(`ERROR ${path}: ${name} (${apiVersion}): ${error.instancePath || "/"}: ${error.message}`
      + (error.params?.allowedValues ? ` (${error.params.allowedValues.join(", ")})` : ""));
  }
  failures += real.length;
  checked++;
  if (real.length === 0) {
    const note = errors.length ? " (ExternalAuth: experimental filter type, see the script)" : "";
    console.log(`ok    ${path}: ${name} (${apiVersion}) [${pkg} types]${note}`);
  }
}
if (checked === 0) {
  console.log("ERROR no custom resources checked");
  failures++;
}
process.exit(failures ? 1 : 0);
