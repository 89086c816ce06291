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
  proxies ROOT              invariants of the shipped proxy configs under ROOT/deploy:
                            every spelling of the identity headers and the fixed-name
                            impersonation headers removed, the path normalised or passed
                            raw as tokengate checked it
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
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            # The strip middleware: an empty value removes the header.
            "headers": {
                "type": "object",
                "additionalProperties": False,
                "required": ["customRequestHeaders"],
                "properties": {
                    "customRequestHeaders": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
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
                    "withUnderscoresAction": {"enum": ["Allow", "RejectRequest", "DropHeader"]},
                    "earlyRequestHeaders": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"remove": _STRINGS},
                    },
                },
            },
            "path": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "escapedSlashesAction": {
                        "enum": [
                            "KeepUnchanged",
                            "RejectRequest",
                            "UnescapeAndForward",
                            "UnescapeAndRedirect",
                        ]
                    },
                    "disableMergeSlashes": {"type": "boolean"},
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


def parse_quantity(text: str) -> int:
    """A Kubernetes memory quantity (`128Mi`, `1Gi`, `134217728`) in bytes."""
    units = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G|)", str(text).strip())
    if not match:
        raise ValueError(f"unsupported quantity {text!r}")
    return int(match.group(1)) * units[match.group(2)]


# What tokengate's memory is made of, measured on the real binary (README, "Memory"): the
# process itself (11 MiB idle, counted with a margin); RSS per byte that the caches count
# against their budgets; one connection once it has served a request. The defaults are
# those of src/config.rs. The budget must leave a quarter of the limit free for requests
# in flight and allocator slack.
MIB = 1 << 20
PROCESS_BYTES = 14 * MIB
CACHE_RSS_PER_BYTE = 1.05
CONNECTION_BYTES = 17 * 1024
DEFAULTS = {"max_bytes": 32 * MIB, "introspection_max_bytes": 16 * MIB, "max_connections": 1024}


def memory_budget(config: dict[str, Any]) -> int:
    cache = config.get("cache") or {}
    server = config.get("server") or {}
    caches = sum(cache.get(key, DEFAULTS[key]) for key in ("max_bytes", "introspection_max_bytes"))
    connections = server.get("max_connections", DEFAULTS["max_connections"])
    return int(PROCESS_BYTES + CACHE_RSS_PER_BYTE * caches + CONNECTION_BYTES * connections)


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
    if "memory" in resources.get("limits", {}):
        limit = parse_quantity(resources["limits"]["memory"])
        budget = memory_budget(config)
        p.expect(budget <= 0.75 * limit,
                 f"memory: the caches and connections of the config need ~{budget / MIB:.0f} MiB, "
                 f"more than 3/4 of the {limit / MIB:.0f} MiB limit (cache.max_bytes, "
                 f"cache.introspection_max_bytes, server.max_connections)")

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


# --- invariants of the shipped proxy configs ------------------------------------------

# What the end-to-end tests prove through the real proxies, checked offline on every
# shipped proxy config, so that an edit (or a new header in authResponseHeaders) cannot
# drop a defence unnoticed: identity and impersonation headers never come from the
# client in any spelling, and the path that tokengate checks is the one the application
# gets.

IMPERSONATION_HEADERS = ["Impersonate-User", "Impersonate-Group", "Impersonate-Uid"]


def underscore_spellings(name: str) -> list[str]:
    """Every spelling of `name` with at least one of its `-` written `_`."""
    positions = [i for i, c in enumerate(name) if c == "-"]
    spellings = []
    for mask in range(1, 1 << len(positions)):
        chars = list(name)
        for bit, index in enumerate(positions):
            if mask & (1 << bit):
                chars[index] = "_"
        spellings.append("".join(chars))
    return spellings


def check_traefik_strip(where: str, middlewares: dict[str, Any], check: Problems) -> None:
    """The strip middleware removes every `_` spelling of every header that a forwardAuth
    middleware copies from tokengate, and the impersonation headers."""
    strips = [m["headers"]["customRequestHeaders"] for m in middlewares.values() if "headers" in m]
    check.expect(len(strips) == 1, f"{where}: exactly one strip middleware (headers)")
    if len(strips) != 1:
        return
    # Traefik compares names case-insensitively; an empty value removes the header.
    removed = {name.lower() for name, value in strips[0].items() if value == ""}
    copied = {h for m in middlewares.values() for h in m.get("forwardAuth", {}).get("authResponseHeaders", [])}
    check.expect(bool(copied), f"{where}: forwardAuth copies identity headers")
    for header in sorted(copied):
        missing = [s for s in underscore_spellings(header) if s.lower() not in removed]
        check.expect(not missing, f"{where}: the strip middleware misses {missing}")
    missing = [h for h in IMPERSONATION_HEADERS if h.lower() not in removed]
    check.expect(not missing, f"{where}: the strip middleware misses {missing}")


def check_proxies(root: Path) -> int:
    check = Problems()
    deploy = root / "deploy"

    # Traefik: entry points normalise and refuse, routers strip before forwardAuth.
    static = yaml.safe_load((deploy / "traefik/traefik.yml").read_text())
    for name, entry in static["entryPoints"].items():
        http = entry.get("http", {})
        where = f"traefik.yml entryPoints.{name}.http"
        check.expect(http.get("sanitizePath") is True, f"{where}.sanitizePath: true")
        check.expect(http.get("aliasHeadersStrategy") in ("delete", "reject"),
                     f"{where}.aliasHeadersStrategy: delete (or reject)")
        encoded = http.get("encodedCharacters", {})
        for key in ("allowEncodedSlash", "allowEncodedBackSlash", "allowEncodedNullCharacter",
                    "allowEncodedSemicolon", "allowEncodedPercent", "allowEncodedQuestionMark",
                    "allowEncodedHash"):
            check.expect(encoded.get(key) is False, f"{where}.encodedCharacters.{key}: false")
    dynamic = yaml.safe_load((deploy / "traefik/dynamic.yml").read_text())["http"]
    middlewares = dynamic["middlewares"]
    check_traefik_strip("traefik/dynamic.yml", middlewares, check)
    strip = next(name for name, m in middlewares.items() if "headers" in m)
    for name, router in dynamic["routers"].items():
        chain = router.get("middlewares", [])
        auth = [i for i, m in enumerate(chain) if "forwardAuth" in middlewares.get(m, {})]
        check.expect(bool(auth) and strip in chain and chain.index(strip) < auth[0],
                     f"traefik/dynamic.yml router {name}: {strip} before tokengate's forwardAuth")
    for middleware in middlewares.values():
        if "forwardAuth" in middleware:
            check.expect(middleware["forwardAuth"].get("trustForwardHeader") is False,
                         "traefik/dynamic.yml: forwardAuth with trustForwardHeader: false")
    crds = [d for d in documents(deploy / "kubernetes/examples/traefik-middleware.yaml")
            if d.get("kind") == "Middleware"]
    check_traefik_strip("kubernetes/examples/traefik-middleware.yaml",
                        {d["metadata"]["name"]: d["spec"] for d in crds}, check)

    # Envoy: one path for every filter; identity headers only from tokengate.
    envoy = yaml.safe_load((deploy / "envoy/envoy.yaml").read_text())
    for listener in envoy["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network in chain["filters"]:
                hcm = network["typed_config"]
                where = f"envoy.yaml listener {listener['name']}"
                check.expect(hcm.get("normalize_path") is True, f"{where}: normalize_path: true")
                check.expect(hcm.get("merge_slashes") is True, f"{where}: merge_slashes: true")
                check.expect(hcm.get("path_with_escaped_slashes_action")
                             in ("REJECT_REQUEST", "UNESCAPE_AND_REDIRECT"),
                             f"{where}: path_with_escaped_slashes_action REJECT_REQUEST "
                             "or UNESCAPE_AND_REDIRECT")
                underscores = hcm.get("common_http_protocol_options", {}).get(
                    "headers_with_underscores_action")
                check.expect(underscores in ("DROP_HEADER", "REJECT_REQUEST"),
                             f"{where}: headers_with_underscores_action DROP_HEADER or REJECT_REQUEST")
                filters = [f["name"] for f in hcm["http_filters"]]
                removed: set[str] = set()
                for f in hcm["http_filters"]:
                    if f["name"] == "envoy.filters.http.header_mutation":
                        mutations = f["typed_config"]["mutations"]["request_mutations"]
                        removed |= {m["remove"].lower() for m in mutations if "remove" in m}
                check.expect("envoy.filters.http.header_mutation" in filters
                             and filters.index("envoy.filters.http.header_mutation")
                             < filters.index("envoy.filters.http.ext_authz"),
                             f"{where}: header_mutation before ext_authz")
                ext_authz = next(f["typed_config"] for f in hcm["http_filters"]
                                 if f["name"] == "envoy.filters.http.ext_authz")
                check.expect(ext_authz.get("failure_mode_allow") is False,
                             f"{where}: ext_authz failure_mode_allow: false")
                response = ext_authz["http_service"]["authorization_response"]
                upstream = [p["exact"].lower() for p in response["allowed_upstream_headers"]["patterns"]]
                missing = [h for h in upstream + [h.lower() for h in IMPERSONATION_HEADERS]
                           if h not in removed]
                check.expect(not missing, f"{where}: header_mutation does not remove {missing}")
                patterns = ext_authz["allowed_headers"]["patterns"]
                check.expect(any(p.get("prefix", "").lower() == "impersonate" and p.get("ignore_case")
                                 for p in patterns),
                             f"{where}: ext_authz allowed_headers passes impersonate-* to tokengate")
    # Envoy over gRPC: the same path handling; fail closed; HTTP/2 to tokengate, health
    # checked over grpc.health.v1; every client header to tokengate (no allowed_headers),
    # so that it sees and refuses a client-sent Impersonate-*.
    grpc = yaml.safe_load((deploy / "envoy/envoy-grpc.yaml").read_text())
    for listener in grpc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network in chain["filters"]:
                hcm = network["typed_config"]
                where = f"envoy-grpc.yaml listener {listener['name']}"
                check.expect(hcm.get("normalize_path") is True, f"{where}: normalize_path: true")
                check.expect(hcm.get("merge_slashes") is True, f"{where}: merge_slashes: true")
                check.expect(hcm.get("path_with_escaped_slashes_action")
                             in ("REJECT_REQUEST", "UNESCAPE_AND_REDIRECT"),
                             f"{where}: path_with_escaped_slashes_action REJECT_REQUEST "
                             "or UNESCAPE_AND_REDIRECT")
                underscores = hcm.get("common_http_protocol_options", {}).get(
                    "headers_with_underscores_action")
                check.expect(underscores in ("DROP_HEADER", "REJECT_REQUEST"),
                             f"{where}: headers_with_underscores_action DROP_HEADER or REJECT_REQUEST")
                ext_authz = next(f["typed_config"] for f in hcm["http_filters"]
                                 if f["name"] == "envoy.filters.http.ext_authz")
                check.expect(ext_authz.get("failure_mode_allow") is False,
                             f"{where}: ext_authz failure_mode_allow: false")
                check.expect("grpc_service" in ext_authz, f"{where}: ext_authz grpc_service")
                check.expect("allowed_headers" not in ext_authz,
                             f"{where}: no allowed_headers (tokengate must see every header)")
    clusters = {c["name"]: c for c in grpc["static_resources"]["clusters"]}
    tokengate = clusters.get("tokengate", {})
    options = tokengate.get("typed_extension_protocol_options", {}).get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
    check.expect("http2_protocol_options" in options.get("explicit_http_config", {}),
                 "envoy-grpc.yaml cluster tokengate: HTTP/2")
    check.expect(any("grpc_health_check" in h for h in tokengate.get("health_checks", [])),
                 "envoy-grpc.yaml cluster tokengate: a grpc_health_check")
    gateway = [d for d in documents(deploy / "kubernetes/examples/envoy-gateway-securitypolicy.yaml")
               if d.get("kind") == "ClientTrafficPolicy"]
    for policy in gateway:
        headers = policy["spec"]["headers"]
        removed = {h.lower() for h in headers["earlyRequestHeaders"]["remove"]}
        where = "kubernetes/examples/envoy-gateway-securitypolicy.yaml ClientTrafficPolicy"
        missing = [h for h in ["x-auth-request-user", "x-auth-request-email", "x-auth-request-groups"]
                   + [h.lower() for h in IMPERSONATION_HEADERS] if h not in removed]
        check.expect(not missing, f"{where}: earlyRequestHeaders.remove misses {missing}")
        check.expect(headers.get("withUnderscoresAction") in ("RejectRequest", "DropHeader"),
                     f"{where}: withUnderscoresAction RejectRequest or DropHeader")
        check.expect(policy["spec"].get("path", {}).get("escapedSlashesAction")
                     in ("RejectRequest", "UnescapeAndRedirect"),
                     f"{where}: path.escapedSlashesAction RejectRequest or UnescapeAndRedirect")

    # nginx (plain and the ingress-nginx reproductions): names with `_` dropped, the
    # application's location replaces every identity and impersonation header, and
    # forwards the raw target that tokengate checked.
    for conf in ("nginx/tokengate.conf", "ingress-nginx/tokengate-ingress.conf",
                 "ingress-nginx/tokengate-ingress-auth-cache.conf"):
        text = re.sub(r"#[^\n]*", "", (deploy / conf).read_text())
        check.expect(re.search(r"underscores_in_headers\s+off;", text) is not None,
                     f"{conf}: underscores_in_headers off")
        check.expect(re.search(r"ignore_invalid_headers\s+on;", text) is not None,
                     f"{conf}: ignore_invalid_headers on")
        app = re.search(r"location\s+/\s*\{(.*?)\n    \}", text, re.S)
        check.expect(app is not None, f"{conf}: a `location /` for the application")
        if app is None:
            continue
        body = app.group(1)
        set_headers = {m.lower() for m in re.findall(r"proxy_set_header\s+'?([A-Za-z-]+)'?\s", body)}
        for header in ["X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups",
                       *IMPERSONATION_HEADERS]:
            check.expect(header.lower() in set_headers,
                         f"{conf}: location / sets (or clears) {header} with proxy_set_header")
        upstreams = re.findall(r"proxy_pass\s+(\S+);", body)
        check.expect(len(upstreams) == 1 and re.fullmatch(r"https?://[^/$]+", upstreams[0]) is not None,
                     f"{conf}: location / proxy_pass without a URI (the raw target tokengate checked)")
        check.expect(re.search(r"X-Original-(URI|URL)\s+\S*\$request_uri;", text) is not None,
                     f"{conf}: the auth location sends $request_uri to tokengate")
    for problem in check.items:
        print(f"ERROR proxies: {problem}")
    if not check.items:
        print("ok    proxies: Traefik, Envoy, Envoy Gateway and nginx configs remove every "
              "spelling of the identity headers and the impersonation headers, and pass "
              "the application the path tokengate checked")
    return 1 if check.items else 0


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
    proxies = commands.add_parser("proxies")
    proxies.add_argument("root", type=Path)
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
    if args.command == "proxies":
        return check_proxies(args.root)
    if args.command == "localize":
        return localize(args.src, args.dst, args.issuer, args.secret_file)
    return serve_issuer(args.port_file)


if __name__ == "__main__":
    sys.exit(main())
