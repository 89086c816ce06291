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
  to-json OUT FILE...       every Kubernetes object of FILE... as JSON, for
                            scripts/check_crd_models.mjs
  grpc RENDERED EXAMPLES    invariants of the rendered gRPC overlay (listener, ports,
                            NetworkPolicy) and the gRPC port every example calls
  env RENDERED              the tokengate container's environment (NAME=VALUE lines)
  sidecar RENDERED DIR      invariants of the sidecar layout (socket path, shared emptyDir,
                            probes on the admin listener, socket group)
  localize SRC DST [--issuer URL] [--secret-file PATH] [--tcp-listeners]
                            copy of a tokengate config with the machine-specific values
                            replaced (environment overrides cannot reach list items);
                            --tcp-listeners: unix: listeners replaced by loopback TCP
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


_SERVICE_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "port"],
    "properties": {
        "group": {"const": ""},
        "kind": {"const": "Service"},
        "name": _DNS_LABEL,
        "namespace": _DNS_LABEL,
        "port": _PORT,
    },
}
_SERVICE_REFS = {"type": "array", "minItems": 1, "items": _SERVICE_REF}


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
                # Exactly one of http and grpc; failOpen spelled out, false.
                "required": ["failOpen"],
                "oneOf": [{"required": ["http"]}, {"required": ["grpc"]}],
                "properties": {
                    "failOpen": {"type": "boolean", "const": False},
                    "timeout": _DURATION,
                    "headersToExtAuth": _STRINGS,
                    "contextExtensions": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "type", "value"],
                            "properties": {
                                "name": {"enum": REQUIREMENT_KEYS},
                                "type": {"const": "Value"},
                                "value": {"type": "string", "minLength": 1},
                            },
                        },
                    },
                    "grpc": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["backendRefs"],
                        "properties": {"backendRefs": _SERVICE_REFS},
                    },
                    "http": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["backendRefs", "path"],
                        "properties": {
                            "backendRefs": _SERVICE_REFS,
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
    # Istio's mesh config, as an IstioOperator (istioctl install -f). Only the ext authz
    # provider and the path normalisation it relies on.
    ("install.istio.io/v1alpha1", "IstioOperator"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["meshConfig"],
        "properties": {
            "meshConfig": {
                "type": "object",
                "additionalProperties": False,
                "required": ["extensionProviders"],
                "properties": {
                    "extensionProviders": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "envoyExtAuthzGrpc"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "envoyExtAuthzGrpc": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["service", "port", "failOpen"],
                                    "properties": {
                                        "service": {"type": "string", "minLength": 1},
                                        "port": _PORT,
                                        "timeout": _DURATION,
                                        "failOpen": {"const": False},
                                        "statusOnError": {"type": "string", "pattern": r"^[1-5][0-9][0-9]$"},
                                        "clearRouteCache": {"type": "boolean"},
                                        "includeRequestBodyInCheck": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                    "pathNormalization": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "normalization": {
                                "enum": ["DEFAULT", "NONE", "BASE", "MERGE_SLASHES",
                                         "DECODE_AND_MERGE_SLASHES"]
                            },
                        },
                    },
                },
            },
        },
    }),
    ("security.istio.io/v1", "AuthorizationPolicy"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["action", "provider", "rules"],
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "required": ["matchLabels"],
                "properties": {
                    "matchLabels": {"type": "object", "minProperties": 1,
                                    "additionalProperties": {"type": "string"}},
                },
            },
            "targetRefs": _TARGET_REFS,
            "action": {"const": "CUSTOM"},
            "provider": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}},
            },
            "rules": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "to": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["operation"],
                                "properties": {
                                    "operation": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            key: _STRINGS
                                            for key in ("hosts", "notHosts", "ports", "notPorts",
                                                        "methods", "notMethods", "paths", "notPaths")
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    }),
    ("gateway.kgateway.dev/v1alpha1", "GatewayExtension"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["extAuth"],
        "properties": {
            # Deprecated upstream (no effect); allowed with its one meaningful value.
            "type": {"const": "ExtAuth"},
            "extAuth": {
                "type": "object",
                "additionalProperties": False,
                "required": ["failOpen", "grpcService"],
                "properties": {
                    "failOpen": {"const": False},
                    "statusOnError": {"type": "integer", "minimum": 100, "maximum": 511},
                    "headersToForward": _STRINGS,
                    "clearRouteCache": {"type": "boolean"},
                    "statPrefix": {"type": "string", "minLength": 1},
                    # Below 100, the rest of the requests pass unchecked.
                    "percentageEnabled": {"const": 100},
                    "grpcService": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["backendRef"],
                        "properties": {
                            "backendRef": _SERVICE_REF,
                            "authority": {"type": "string", "minLength": 1},
                            "requestTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    }),
    ("gateway.kgateway.dev/v1alpha1", "TrafficPolicy"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["targetRefs", "extAuth"],
        "properties": {
            "targetRefs": _TARGET_REFS,
            "extAuth": {
                "type": "object",
                "additionalProperties": False,
                "required": ["extensionRef"],
                "properties": {
                    "extensionRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {"name": _DNS_LABEL, "namespace": _DNS_LABEL},
                    },
                    "contextExtensions": {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {"enum": REQUIREMENT_KEYS},
                        "additionalProperties": {"type": "string", "minLength": 1},
                    },
                },
            },
        },
    }),
    # Gateway API v1 HTTPRoute, with the experimental ExternalAuth filter (Gateway API 1.3
    # and later, experimental channel) and ExtensionRef filters (Traefik's Middlewares).
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _object({
        "type": "object",
        "additionalProperties": False,
        "required": ["parentRefs", "rules"],
        "properties": {
            "parentRefs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "group": {"const": "gateway.networking.k8s.io"},
                        "kind": {"const": "Gateway"},
                        "name": _DNS_LABEL,
                        "namespace": _DNS_LABEL,
                        "sectionName": _DNS_LABEL,
                    },
                },
            },
            "hostnames": _STRINGS,
            "rules": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["backendRefs"],
                    "properties": {
                        "matches": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "path": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["type", "value"],
                                        "properties": {
                                            "type": {"enum": ["Exact", "PathPrefix",
                                                              "RegularExpression"]},
                                            "value": {"type": "string", "pattern": "^/"},
                                        },
                                    },
                                },
                            },
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
                                            "externalAuth": {
                                                "type": "object",
                                                "additionalProperties": False,
                                                "required": ["protocol", "backendRef"],
                                                "properties": {
                                                    "protocol": {"enum": ["GRPC", "HTTP"]},
                                                    "backendRef": _SERVICE_REF,
                                                    "grpc": {
                                                        "type": "object",
                                                        "additionalProperties": False,
                                                        "properties": {"allowedHeaders": _STRINGS},
                                                    },
                                                    "http": {
                                                        "type": "object",
                                                        "additionalProperties": False,
                                                        "required": ["path", "allowedResponseHeaders"],
                                                        "properties": {
                                                            "path": {"const": "/ext-authz"},
                                                            "allowedHeaders": _STRINGS,
                                                            # Empty would copy every header.
                                                            "allowedResponseHeaders": _STRINGS,
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    },
                                    {
                                        "additionalProperties": False,
                                        "required": ["type", "extensionRef"],
                                        "properties": {
                                            "type": {"const": "ExtensionRef"},
                                            "extensionRef": {
                                                "type": "object",
                                                "additionalProperties": False,
                                                "required": ["group", "kind", "name"],
                                                "properties": {
                                                    "group": {"type": "string", "minLength": 1},
                                                    "kind": {"type": "string", "minLength": 1},
                                                    "name": _DNS_LABEL,
                                                },
                                            },
                                        },
                                    },
                                ],
                            },
                        },
                        "backendRefs": _SERVICE_REFS,
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


def to_json(out: Path, paths: list[Path]) -> int:
    objects = [{"path": str(path), "document": document}
               for path in paths for document in documents(path)
               if isinstance(document, dict) and "apiVersion" in document]
    out.write_text(json.dumps(objects))
    return 0


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


def print_env(rendered: Path) -> int:
    """The environment of the Deployment's tokengate container, as NAME=VALUE lines."""
    for obj in documents(rendered):
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "tokengate":
                    for var in container.get("env", []):
                        print(f"{var['name']}={var['value']}")
    return 0


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


def localize(src: Path, dst: Path, issuer: str | None, secret_file: str | None,
             tcp_listeners: bool = False) -> int:
    config = yaml.safe_load(src.read_text())
    if tcp_listeners:
        # For a binary without unix socket listeners: the rest of the config still checks.
        for n, key in enumerate(("listen", "admin_listen", "grpc_listen")):
            if str(config.get(key, "")).startswith("unix:"):
                config[key] = f"127.0.0.1:{18080 + n}"
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
    grpc = commands.add_parser("grpc")
    grpc.add_argument("rendered", type=Path)
    grpc.add_argument("examples", type=Path)
    env = commands.add_parser("env")
    env.add_argument("rendered", type=Path)
    sidecar = commands.add_parser("sidecar")
    sidecar.add_argument("rendered", type=Path)
    sidecar.add_argument("directory", type=Path)
    base = commands.add_parser("base")
    base.add_argument("rendered", type=Path)
    base.add_argument("config", type=Path)
    dashboard = commands.add_parser("dashboard")
    dashboard.add_argument("file", type=Path)
    present = commands.add_parser("metrics-present")
    present.add_argument("names", type=Path)
    present.add_argument("exposition", type=Path)
    as_json = commands.add_parser("to-json")
    as_json.add_argument("out", type=Path)
    as_json.add_argument("files", nargs="+", type=Path)
    local = commands.add_parser("localize")
    local.add_argument("src", type=Path)
    local.add_argument("dst", type=Path)
    local.add_argument("--issuer")
    local.add_argument("--secret-file")
    local.add_argument("--tcp-listeners", action="store_true")
    proxies = commands.add_parser("proxies")
    proxies.add_argument("root", type=Path)
    issuer = commands.add_parser("issuer")
    issuer.add_argument("port_file", type=Path)
    args = parser.parse_args()

    if args.command == "manifests":
        return check_manifests(args.files, args.kubernetes_version)
    if args.command == "grpc":
        return check_grpc(args.rendered, args.examples)
    if args.command == "env":
        return print_env(args.rendered)
    if args.command == "sidecar":
        return check_sidecar(args.rendered, args.directory)
    if args.command == "base":
        return check_base(args.rendered, args.config)
    if args.command == "dashboard":
        return check_dashboard(args.file)
    if args.command == "metrics-present":
        return check_metrics_present(args.names, args.exposition)
    if args.command == "proxies":
        return check_proxies(args.root)
    if args.command == "to-json":
        return to_json(args.out, args.files)
    if args.command == "localize":
        return localize(args.src, args.dst, args.issuer, args.secret_file, args.tcp_listeners)
    return serve_issuer(args.port_file)


if __name__ == "__main__":
    sys.exit(main())
