#!/usr/bin/env python3
"""The Python half of scripts/check-deploy.sh: offline checks of the deployment artifacts.

Runs in .e2e/venv (kubernetes-validate, which brings jsonschema and PyYAML).

  manifests FILE...         validate every Kubernetes object against the Kubernetes
                            JSON schemas (strict: unknown fields are errors); CRD kinds
                            against the subset schemas below; anything else fails
  base RENDERED CONFIG      invariants of the rendered kustomize base (security
                            context, probes, selectors, ports, grace periods)
  dashboard FILE            structure of the Grafana dashboard; prints the metric
                            names its queries use, one per line
  metrics-present NAMES EXPOSITION
                            every metric name in NAMES appears in the Prometheus text
                            EXPOSITION (what the running binary served)
  localize SRC DST [--issuer URL] [--secret-file PATH]
                            copy of a tokengate config with the machine-specific values
                            replaced (environment overrides cannot reach list items)
  issuer PORT_FILE          a minimal OIDC issuer on a free loopback port (discovery and
                            JWKS), for the readiness check; writes its port to PORT_FILE
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml
from kubernetes_validate import utils as kv

# --- Kubernetes objects ---------------------------------------------------------------

# Custom resources of the examples. kubernetes-validate knows only built-in kinds (and
# reports any other kind as a warning, exit code 0). Rather than skip these, each is
# checked against a subset schema: the fields this repository uses, spelled as in the
# upstream API types (Traefik v3 `traefik.io/v1alpha1`, Envoy Gateway 1.x
# `gateway.envoyproxy.io/v1alpha1`, Gateway API `v1beta1` ReferenceGrant), with
# unknown fields refused, so that a misspelt field fails here instead of being ignored
# by the cluster. They are not the full upstream CRD schemas.

_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
_DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_TARGET_REFS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["group", "kind", "name"],
        "properties": {
            "group": {"type": "string"},
            "kind": {"type": "string"},
            "name": {"type": "string", "minLength": 1},
            "sectionName": {"type": "string"},
        },
    },
}


def _object(spec: dict[str, Any], namespaced: bool = True) -> dict[str, Any]:
    metadata_required = ["name", "namespace"] if namespaced else ["name"]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": metadata_required,
                "properties": {"name": _DNS_LABEL, "namespace": _DNS_LABEL},
            },
            "spec": spec,
        },
    }


CRD_SUBSET_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("traefik.io/v1alpha1", "Middleware"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["forwardAuth"],
        "properties": {
            "forwardAuth": {
                "type": "object",
                "additionalProperties": False,
                "required": ["address"],
                "properties": {
                    "address": {"type": "string", "pattern": r"^https?://[^/]+/auth(\?.*)?$"},
                    "trustForwardHeader": {"type": "boolean"},
                    "authResponseHeaders": _STRINGS,
                    "authResponseHeadersRegex": {"type": "string"},
                    "authRequestHeaders": _STRINGS,
                },
            },
        },
    }),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["targetRefs", "extAuth"],
        "properties": {
            "targetRefs": _TARGET_REFS,
            "extAuth": {
                "type": "object",
                "additionalProperties": False,
                "required": ["http"],
                "properties": {
                    "failOpen": {"type": "boolean", "const": False},
                    "headersToExtAuth": _STRINGS,
                    "http": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["backendRefs", "path"],
                        "properties": {
                            "backendRefs": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name", "port"],
                                    "properties": {
                                        "group": {"const": ""},
                                        "kind": {"const": "Service"},
                                        "name": _DNS_LABEL,
                                        "namespace": _DNS_LABEL,
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                    },
                                },
                            },
                            # tokengate's Envoy endpoint; Envoy appends the original path.
                            "path": {"const": "/ext-authz"},
                            "headersToBackend": _STRINGS,
                        },
                    },
                },
            },
        },
    }),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["targetRefs", "headers"],
        "properties": {
            "targetRefs": _TARGET_REFS,
            "headers": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "earlyRequestHeaders": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"remove": _STRINGS},
                    },
                },
            },
        },
    }),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["from", "to"],
        "properties": {
            "from": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["group", "kind", "namespace"],
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "namespace": _DNS_LABEL,
                    },
                },
            },
            "to": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["group", "kind"],
                    "properties": {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _DNS_LABEL,
                    },
                },
            },
        },
    }),
}


def documents(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for document in yaml.safe_load_all(f):
            if document is not None:
                yield document


def check_manifests(paths: list[Path], versions: list[str]) -> int:
    failures = 0
    count = 0
    for path in paths:
        for document in documents(path):
            count += 1
            if not isinstance(document, dict) or "apiVersion" not in document or "kind" not in document:
                print(f"ERROR {path}: a document without apiVersion/kind")
                failures += 1
                continue
            api_version, kind = document["apiVersion"], document["kind"]
            name = f"{kind}/{document.get('metadata', {}).get('name', '?')}"
            subset = CRD_SUBSET_SCHEMAS.get((api_version, kind))
            if subset is not None:
                errors = sorted(
                    jsonschema.Draft202012Validator(subset).iter_errors(document),
                    key=lambda error: list(error.path),
                )
                for error in errors:
                    where = ".".join(str(part) for part in error.path)
                    print(f"ERROR {path}: {name} ({api_version}): {where}: {error.message}")
                failures += len(errors)
                if not errors:
                    print(f"ok    {path}: {name} ({api_version}) "
                          "[custom resource: tokengate's subset schema, not the upstream CRD]")
                continue
            ok = True
            for version in versions:
                try:
                    kv.validate(document, version, strict=True)
                except kv.ValidationError as error:
                    where = ".".join(str(part) for part in error.path)
                    print(f"ERROR {path}: {name} against Kubernetes {version}: {where}: {error.message}")
                    ok = False
                except kv.SchemaNotFoundError as error:
                    # An unknown built-in kind or apiVersion (a typo, or an API removed
                    # in this version) is an error here, never a warning.
                    print(f"ERROR {path}: {error.message}, and it is not one of the "
                          "custom resources this script knows")
                    ok = False
            failures += 0 if ok else 1
            if ok:
                print(f"ok    {path}: {name} ({api_version}, Kubernetes {', '.join(versions)}, strict)")
    if count == 0:
        print("ERROR no Kubernetes objects found")
        return 1
    return 1 if failures else 0


# --- invariants of the rendered base --------------------------------------------------


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.items.append(message)


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text).strip())
    if not match:
        raise ValueError(f"unsupported duration {text!r}")
    return int(match.group(1)) * units[match.group(2)]


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    match_labels = (selector or {}).get("matchLabels") or {}
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def check_base(rendered: Path, config_path: Path) -> int:
    objects = list(documents(rendered))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    p = Problems()

    expected = {"ServiceAccount", "ConfigMap", "Service", "Deployment",
                "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
    p.expect(set(by_kind) == expected, f"base kinds are {sorted(by_kind)}, expected {sorted(expected)}")
    for obj in objects:
        p.expect("namespace" not in obj["metadata"],
                 f"{obj['kind']}/{obj['metadata']['name']}: the base must not set a namespace")
    if set(by_kind) != expected or any(len(v) != 1 for v in by_kind.values()):
        print("\n".join(p.items) or "ERROR expected exactly one object of each kind")
        return 1

    config = yaml.safe_load(config_path.read_text())
    (deployment,) = by_kind["Deployment"]
    (service,) = by_kind["Service"]
    (pdb,) = by_kind["PodDisruptionBudget"]
    (hpa,) = by_kind["HorizontalPodAutoscaler"]
    (netpol,) = by_kind["NetworkPolicy"]
    (configmap,) = by_kind["ConfigMap"]
    (account,) = by_kind["ServiceAccount"]

    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    p.expect(spec.get("replicas", 1) >= 2, "Deployment: at least 2 replicas")
    p.expect(selects(spec["selector"], pod_labels), "Deployment: selector does not select its pods")
    p.expect(pod.get("automountServiceAccountToken") is False, "pod: automountServiceAccountToken must be false")
    p.expect(pod.get("serviceAccountName") == account["metadata"]["name"], "pod: serviceAccountName")
    p.expect(account.get("automountServiceAccountToken") is False, "ServiceAccount: automountServiceAccountToken")
    pod_security = pod.get("securityContext", {})
    p.expect(pod_security.get("runAsNonRoot") is True, "pod: runAsNonRoot")
    p.expect(pod_security.get("runAsUser") == 65532, "pod: runAsUser 65532 (the image's user)")
    p.expect(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod: seccomp RuntimeDefault")

    (container,) = pod["containers"]
    security = container.get("securityContext", {})
    p.expect(security.get("readOnlyRootFilesystem") is True, "container: readOnlyRootFilesystem")
    p.expect(security.get("allowPrivilegeEscalation") is False, "container: allowPrivilegeEscalation false")
    p.expect(security.get("capabilities", {}).get("drop") == ["ALL"], "container: capabilities drop ALL")
    p.expect(not security.get("capabilities", {}).get("add"), "container: no added capabilities")

    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    listen_port = int(str(config.get("listen", "0.0.0.0:8080")).rsplit(":", 1)[1])
    admin_port = int(str(config.get("admin_listen", "0.0.0.0:9090")).rsplit(":", 1)[1])
    p.expect(ports.get("auth") == listen_port, f"container port auth must be the config's listen port {listen_port}")
    p.expect(ports.get("admin") == admin_port, f"container port admin must be the config's admin_listen port {admin_port}")

    def probe(name: str) -> tuple[Any, Any]:
        get = (container.get(name) or {}).get("httpGet") or {}
        return get.get("path"), get.get("port")

    p.expect(probe("livenessProbe") == ("/healthz", "admin"), "livenessProbe: httpGet /healthz on port admin")
    p.expect(probe("readinessProbe") == ("/readyz", "admin"), "readinessProbe: httpGet /readyz on port admin")
    if "startupProbe" in container:
        p.expect(probe("startupProbe") == ("/healthz", "admin"), "startupProbe: httpGet /healthz on port admin")

    resources = container.get("resources", {})
    p.expect({"cpu", "memory"} <= set(resources.get("requests", {})), "resources: cpu and memory requests")
    p.expect("memory" in resources.get("limits", {}), "resources: a memory limit")

    shutdown = config.get("shutdown") or {}
    grace = parse_duration(shutdown.get("grace", "20s"))
    p.expect(pod.get("terminationGracePeriodSeconds", 30) > grace,
             f"terminationGracePeriodSeconds must exceed shutdown.grace ({grace:g}s)")

    # The config file and the client secret reach the paths the container reads.
    args = container.get("args", [])
    config_file = args[args.index("--config") + 1] if "--config" in args else "/etc/tokengate/tokengate.yaml"
    mounts = {mount["name"]: mount for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}

    def mounted_from(path: str) -> dict[str, Any] | None:
        for name, mount in mounts.items():
            if path.startswith(mount["mountPath"].rstrip("/") + "/"):
                return volumes.get(name)
        return None

    config_volume = mounted_from(config_file) or {}
    p.expect(config_volume.get("configMap", {}).get("name") == configmap["metadata"]["name"],
             f"{config_file} must come from the generated ConfigMap {configmap['metadata']['name']}")
    p.expect(Path(config_file).name in configmap.get("data", {}),
             f"the ConfigMap must hold {Path(config_file).name}")
    for issuer in config.get("issuers", []):
        secret_file = (issuer.get("introspection") or {}).get("client_secret_file")
        if secret_file:
            volume = mounted_from(secret_file) or {}
            p.expect(volume.get("secret", {}).get("secretName") == "tokengate-client-secret",
                     f"{secret_file} must come from the Secret tokengate-client-secret")

    p.expect(selects(service["spec"].get("selector") and {"matchLabels": service["spec"]["selector"]}, pod_labels),
             "Service: selector does not select the pods")
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    p.expect(service_ports.get("auth", {}).get("targetPort") in ("auth", listen_port), "Service: port auth → auth")
    p.expect(selects(pdb["spec"].get("selector"), pod_labels), "PodDisruptionBudget: selector")
    p.expect(pdb["spec"].get("minAvailable") == 1, "PodDisruptionBudget: minAvailable 1")
    target = hpa["spec"]["scaleTargetRef"]
    p.expect((target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]),
             "HorizontalPodAutoscaler: scaleTargetRef must be the Deployment")
    p.expect(hpa["spec"].get("minReplicas", 1) >= 2, "HorizontalPodAutoscaler: minReplicas >= 2")
    cpu = [m for m in hpa["spec"].get("metrics", [])
           if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
    p.expect(len(cpu) == 1, "HorizontalPodAutoscaler: one CPU metric")
    p.expect(selects(netpol["spec"].get("podSelector"), pod_labels), "NetworkPolicy: podSelector")
    p.expect(sorted(netpol["spec"].get("policyTypes", [])) == ["Egress", "Ingress"],
             "NetworkPolicy: policyTypes Ingress and Egress")
    ingress_ports = {port.get("port") for rule in netpol["spec"].get("ingress", [])
                     for port in rule.get("ports", [])}
    p.expect(ingress_ports <= {"auth", "admin", listen_port, admin_port},
             f"NetworkPolicy: ingress only to the auth and admin ports, not {ingress_ports}")
    p.expect(all(rule.get("from") for rule in netpol["spec"].get("ingress", [])),
             "NetworkPolicy: every ingress rule names its peers")
    egress_ports = [port.get("port") for rule in netpol["spec"].get("egress", [])
                    for port in rule.get("ports", [])]
    p.expect(53 in egress_ports, "NetworkPolicy: egress to DNS")
    p.expect(all(rule.get("to") and rule.get("ports") for rule in netpol["spec"].get("egress", [])),
             "NetworkPolicy: every egress rule names its peers and ports")

    for problem in p.items:
        print(f"ERROR base: {problem}")
    if not p.items:
        print(f"ok    base: {len(objects)} objects; security context, probes, selectors, ports, "
              "config and secret mounts, grace period, PDB, HPA and NetworkPolicy agree")
    return 1 if p.items else 0


# --- Grafana dashboard ----------------------------------------------------------------

METRIC_NAME = re.compile(r"\b((?:tokengate|process)_[a-z0-9_]+)\b")


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_dashboard(path: Path) -> int:
    dashboard = json.loads(path.read_text())
    p = Problems()
    p.expect(isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= 36,
             "schemaVersion (36 or later)")
    p.expect(bool(dashboard.get("uid")) and bool(dashboard.get("title")), "uid and title")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    datasource = variables.get("DS_PROMETHEUS", {})
    p.expect(datasource.get("type") == "datasource" and datasource.get("query") == "prometheus",
             "a DS_PROMETHEUS data source variable of type prometheus")
    ids = [panel.get("id") for panel in panels_of(dashboard)]
    p.expect(len(ids) == len(set(ids)), "panel ids are unique")
    names: set[str] = set()
    queries = 0
    for panel in panels_of(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "?")
        p.expect(panel.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}",
                 f"panel {title!r}: data source ${{DS_PROMETHEUS}}")
        p.expect(bool(panel.get("targets")), f"panel {title!r}: has queries")
        grid = panel.get("gridPos", {})
        p.expect(all(k in grid for k in "hwxy") and grid["x"] + grid["w"] <= 24,
                 f"panel {title!r}: gridPos within 24 columns")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            queries += 1
            p.expect(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"),
                     f"panel {title!r}: unbalanced brackets in {expr!r}")
            found = METRIC_NAME.findall(expr)
            p.expect(bool(found), f"panel {title!r}: no metric in {expr!r}")
            names.update(found)
    for problem in p.items:
        print(f"ERROR {path}: {problem}", file=sys.stderr)
    if p.items:
        return 1
    print(f"ok    {path}: {sum(1 for _ in panels_of(dashboard))} panels, {queries} queries, "
          f"{len(names)} metrics", file=sys.stderr)
    for name in sorted(names):
        print(name)
    return 0


def check_metrics_present(names_path: Path, exposition_path: Path) -> int:
    served = set()
    for line in exposition_path.read_text().splitlines():
        if line and not line.startswith("#"):
            served.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    wanted = [name for name in names_path.read_text().split() if name]
    missing = [name for name in wanted if name not in served]
    for name in missing:
        print(f"ERROR the dashboard queries {name}, which the running binary does not serve")
    if not missing:
        print(f"ok    every metric the dashboard queries ({len(wanted)}) is served on /metrics")
    return 1 if missing else 0


# --- configs ----------------------------------------------------------------------------


def localize(src: Path, dst: Path, issuer: str | None, secret_file: str | None) -> int:
    config = yaml.safe_load(src.read_text())
    for entry in config.get("issuers", []):
        if issuer:
            entry["issuer"] = issuer
            entry.pop("jwks_uri", None)
        introspection = entry.get("introspection")
        if secret_file and introspection and "client_secret_file" in introspection:
            introspection["client_secret_file"] = secret_file
    dst.write_text(yaml.safe_dump(config, sort_keys=False))
    return 0


# --- a minimal issuer -----------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def serve_issuer(port_file: Path) -> int:
    """Discovery and a JWKS with one fresh RSA key: enough for tokengate to turn ready."""
    key = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                         check=True, capture_output=True).stdout
    modulus = subprocess.run(["openssl", "rsa", "-noout", "-modulus"], input=key,
                             check=True, capture_output=True).stdout.decode().strip()
    n = bytes.fromhex(modulus.split("=", 1)[1])
    jwks = {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "check-deploy",
                      "n": b64url(n), "e": "AQAB"}]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            base = f"http://127.0.0.1:{self.server.server_address[1]}/realms/main"
            documents = {
                "/realms/main/.well-known/openid-configuration": {
                    "issuer": base,
                    "jwks_uri": f"{base}/protocol/openid-connect/certs",
                    "introspection_endpoint": f"{base}/protocol/openid-connect/token/introspect",
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
                "/realms/main/protocol/openid-connect/certs": jwks,
            }
            body = documents.get(self.path)
            if body is None:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    manifests = commands.add_parser("manifests")
    manifests.add_argument("--kubernetes-version", action="append", required=True)
    manifests.add_argument("files", nargs="+", type=Path)
    base = commands.add_parser("base")
    base.add_argument("rendered", type=Path)
    base.add_argument("config", type=Path)
    dashboard = commands.add_parser("dashboard")
    dashboard.add_argument("file", type=Path)
    present = commands.add_parser("metrics-present")
    present.add_argument("names", type=Path)
    present.add_argument("exposition", type=Path)
    local = commands.add_parser("localize")
    local.add_argument("src", type=Path)
    local.add_argument("dst", type=Path)
    local.add_argument("--issuer")
    local.add_argument("--secret-file")
    issuer = commands.add_parser("issuer")
    issuer.add_argument("port_file", type=Path)
    args = parser.parse_args()

    if args.command == "manifests":
        return check_manifests(args.files, args.kubernetes_version)
    if args.command == "base":
        return check_base(args.rendered, args.config)
    if args.command == "dashboard":
        return check_dashboard(args.file)
    if args.command == "metrics-present":
        return check_metrics_present(args.names, args.exposition)
    if args.command == "localize":
        return localize(args.src, args.dst, args.issuer, args.secret_file)
    return serve_issuer(args.port_file)


if __name__ == "__main__":
    sys.exit(main())
