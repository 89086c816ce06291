#!/usr/bin/env python3
"""Aggregates benches/load raw results (one TSV line per run) into a markdown table.

usage: report.py <raw.tsv> <memory.tsv> <meta.txt> <out.md>
"""
import csv, statistics, sys

raw, mem, meta, out = sys.argv[1:5]
rows = {}
order = []
with open(raw) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        key = (r["path"], r["service"], r["alg"], r["mix"])
        if key not in rows:
            rows[key] = []
            order.append(key)
        rows[key].append(r)

def med(runs, field):
    vals = [float(r[field]) for r in runs if r[field] not in ("", "NA")]
    return statistics.median(vals) if vals else None

cells = {}
for key in order:
    runs = rows[key]
    cells[key] = {
        "runs": len(runs),
        "rps": med(runs, "rps"),
        "p50": med(runs, "p50_ms"),
        "p99": med(runs, "p99_ms"),
        "cpu": med(runs, "cpu_us_per_req"),
        "rss": med(runs, "peak_rss_kib"),
        "bad": max(int(r["non2xx"]) + int(r["sock_err"]) for r in runs),
        "reqs": med(runs, "requests"),
        "note": ";".join(sorted({r["note"] for r in runs if r["note"]})),
    }

PEERS = ("envoy-jwt_authn", "apache-mod_oauth2")

def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"

def fmt(v, nd=0):
    return "–" if v is None else f"{v:,.{nd}f}"

lines = []
lines.append(open(meta).read().rstrip() + "\n")
lines.append("| path | service | alg | tokens | req/s | p50 ms | p99 ms | auth CPU µs/req | peak RSS MiB "
             "| req/s ÷ floor | CPU ÷ floor | req/s ÷ best peer | CPU ÷ best peer | errors | notes |")
lines.append("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for key in order:
    path, service, alg, mix = key
    c = cells[key]
    floor = cells.get((path, "floor-nginx", "-", "same"))
    peers = [cells[(path, p, alg, mix)] for p in PEERS if (path, p, alg, mix) in cells
             and cells[(path, p, alg, mix)]["rps"] and cells[(path, p, alg, mix)]["bad"] == 0]
    best = max(peers, key=lambda p: p["rps"]) if peers else None
    best_cpu = min((p["cpu"] for p in peers if p["cpu"]), default=None)
    lines.append(
        f"| {path} | {service} | {alg} | {mix} | {fmt(c['rps'])} | {fmt(c['p50'], 2)} | {fmt(c['p99'], 2)} "
        f"| {fmt(c['cpu'], 1)} | {fmt(c['rss'] / 1024 if c['rss'] else None, 1)} "
        f"| {ratio(c['rps'], floor['rps'] if floor else None)} | {ratio(c['cpu'], floor['cpu'] if floor else None)} "
        f"| {ratio(c['rps'], best['rps'] if best else None)} | {ratio(c['cpu'], best_cpu)} "
        f"| {c['bad']} | {c['note']} |")

# The comparisons the gRPC and unix-socket cells exist for, one run, side by side:
# req/s ratio (higher is better) and auth CPU per request ratio (lower is better; the
# envoy/* cells count Envoy and tokengate together).
PAIRS = [
    (("envoy", "tokengate-grpc"), ("direct", "envoy-jwt_authn"), "Envoy → tokengate gRPC ÷ Envoy jwt_authn"),
    (("envoy", "tokengate-http"), ("direct", "envoy-jwt_authn"), "Envoy → tokengate HTTP ÷ Envoy jwt_authn"),
    (("envoy", "tokengate-grpc"), ("envoy", "tokengate-http"), "Envoy → tokengate gRPC ÷ HTTP ext_authz"),
    (("nginx", "tokengate-unix"), ("nginx", "tokengate"), "nginx → tokengate unix socket ÷ loopback TCP"),
]
side = []
for (a_path, a_svc), (b_path, b_svc), label in PAIRS:
    for alg in ("RS256", "ES256"):
        for mix in ("same", "rotate10k", "new"):
            a = cells.get((a_path, a_svc, alg, mix))
            b = cells.get((b_path, b_svc, alg, mix))
            if not a or not b:
                continue
            side.append(f"| {label} | {alg} | {mix} | {ratio(a['rps'], b['rps'])} | {ratio(a['cpu'], b['cpu'])} |")
if side:
    lines.append("")
    lines.append("### Side by side")
    lines.append("")
    lines.append("| comparison | alg | tokens | req/s ratio | auth CPU/req ratio |")
    lines.append("|---|---|---|---:|---:|")
    lines.extend(side)

lines.append("")
lines.append("### tokengate memory")
lines.append("")
lines.append("| state | VmRSS MiB | VmHWM MiB |")
lines.append("|---|---:|---:|")
try:
    with open(mem) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            lines.append(f"| {r['state']} | {int(r['rss_kib']) / 1024:.1f} | {int(r['hwm_kib']) / 1024:.1f} |")
except FileNotFoundError:
    lines.append("| (not measured) | – | – |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
