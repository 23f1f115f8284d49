#!/usr/bin/env python3
"""Turns benches/results/*.jsonl into a markdown table and an SVG chart.

Standard library only. Used by benches/compare:

    report.py annotate KEY=VALUE...   < one JSON line  > the line, with fields
    report.py render RESULTS.jsonl OUT.md OUT.svg     (prints the table too)

When a server ran a workload several times (--rounds), the table and chart
show the median of each figure and the worst of the error counts.
"""

import json
import statistics
import sys
from html import escape

# Server order in tables and charts; unknown servers follow in name order.
SERVERS = ["bare-sse", "bare-sse-t2", "bare-sse-t2-2cpu", "bare-sse-cluster", "floor", "axum", "go", "nchan"]
COLORS = {
    "bare-sse": "#d9480f",
    "floor": "#868e96",
    "axum": "#1c7ed6",
    "go": "#0ca678",
    "nchan": "#7048e8",
}


def annotate(pairs):
    line = sys.stdin.read().strip()
    try:
        row = json.loads(line)
    except ValueError:
        row = {"error": "loadgen printed no JSON", "output": line[-500:]}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if value in ("true", "false"):
            row[key] = value == "true"
        elif value.isdigit():
            row[key] = int(value)
        else:
            row[key] = value
    print(json.dumps(row))


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def worst(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def combine(rows):
    """One record per (server, workload), in run order of first appearance."""
    groups = {}
    for row in rows:
        phase_ms = max(row.get("deliver_ms") or 0, row.get("publish_ms") or 0)
        if row.get("loadgen_cpu_s") is not None and phase_ms > 0:
            row["loadgen_busy_pct"] = 100.0 * row["loadgen_cpu_s"] / (phase_ms / 1000.0)
        key = (row.get("server", "?"), row.get("workload", "?"))
        groups.setdefault(key, []).append(row)
    out = {}
    for key, group in groups.items():
        rec = {"runs": len(group)}
        for field in (
            "subscribers_connected",
            "connect_ms",
            "bytes_per_idle_subscriber",
            "rss_idle_kb",
            "deliveries_per_s",
            "deliver_ms",
            "cpu_us_per_delivery",
            "cpu_us_per_request",
            "core_us_per_delivery",
            "core_us_per_request",
            "latency_p50_us",
            "latency_p99_us",
            "publish_rps",
            "loadgen_busy_pct",
        ):
            rec[field] = median(r.get(field) for r in group)
        for field in (
            "missing",
            "duplicated",
            "out_of_order",
            "publish_errors",
            "subscribe_errors",
            "subscribers_dropped",
        ):
            rec[field] = worst(r.get(field) for r in group)
        rec["errors"] = sorted({r["error"] for r in group if r.get("error")})
        busy = [float(r.get("machine_busy_pct", 0) or 0) for r in group]
        rec["busy"] = max(busy) if busy else 0.0
        rec["died"] = any(r.get("server_alive_after") is False for r in group)
        rec["timed_out"] = any(r.get("publish_timed_out") or r.get("connect_timed_out") for r in group)
        out[key] = rec
    return out


def server_order(names):
    known = [s for s in SERVERS if s in names]
    return known + sorted(n for n in names if n not in SERVERS)


def fmt(value, digits=0, scale=1.0):
    if value is None:
        return "-"
    value = value / scale
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def table(combined):
    workloads = []
    for _, w in combined:
        if w not in workloads:
            workloads.append(w)
    servers = server_order({s for s, _ in combined})
    head = (
        "| workload | server | subs | connect ms | bytes/idle sub | deliveries/s | deliver ms "
        "| CPU µs/delivery | core µs/delivery | p50 ms | p99 ms | publish req/s | CPU µs/req "
        "| core µs/req | loadgen % | missing/dup/ooo | errors |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for w in workloads:
        for s in servers:
            r = combined.get((s, w))
            if r is None:
                continue
            problems = []
            if r["publish_errors"]:
                problems.append(f"{r['publish_errors']:.0f} publish")
            if r["subscribe_errors"]:
                problems.append(f"{r['subscribe_errors']:.0f} subscribe")
            if r["subscribers_dropped"]:
                problems.append(f"{r['subscribers_dropped']:.0f} dropped")
            if r["timed_out"]:
                problems.append("timed out")
            if r["died"]:
                problems.append("server died")
            if r["busy"] > 10:
                problems.append(f"machine {r['busy']:.0f}% busy before")
            problems += r["errors"]
            lines.append(
                "| {w} | {s} | {subs} | {conn} | {bps} | {dps} | {dms} | {cpu} | {core} | {p50} | {p99} | {rps} | {cpr} | {corer} | {lg} | {mdo} | {err} |".format(
                    w=w,
                    s=s,
                    subs=fmt(r["subscribers_connected"]),
                    conn=fmt(r["connect_ms"]),
                    bps=fmt(r["bytes_per_idle_subscriber"]),
                    dps=fmt(r["deliveries_per_s"]),
                    dms=fmt(r["deliver_ms"]),
                    cpu=fmt(r["cpu_us_per_delivery"], 2),
                    core=fmt(r["core_us_per_delivery"], 2),
                    p50=fmt(r["latency_p50_us"], 1, 1000.0),
                    p99=fmt(r["latency_p99_us"], 1, 1000.0),
                    rps=fmt(r["publish_rps"]) if r["deliveries_per_s"] is None else "-",
                    cpr=fmt(r["cpu_us_per_request"], 1) if r["deliveries_per_s"] is None else "-",
                    corer=fmt(r["core_us_per_request"], 1) if r["deliveries_per_s"] is None else "-",
                    lg=fmt(r["loadgen_busy_pct"]),
                    mdo="/".join(fmt(r[k]) for k in ("missing", "duplicated", "out_of_order")),
                    err=", ".join(problems) or "",
                )
            )
    return "\n".join(lines) + "\n"


def panels(combined):
    """(title, unit, {server: value}) for each chart panel, in order."""
    workloads = []
    for _, w in combined:
        if w not in workloads:
            workloads.append(w)
    out = []

    def pick(workload, field):
        return {s: r[field] for (s, w), r in combined.items() if w == workload and r[field] is not None}

    for w in workloads:
        if any(r["deliveries_per_s"] for (s, ww), r in combined.items() if ww == w):
            out.append((f"{w}: deliveries per second (higher is better)", "/s", pick(w, "deliveries_per_s")))
            out.append((f"{w}: server CPU µs per delivery, process (lower is better)", "µs", pick(w, "cpu_us_per_delivery")))
            out.append((f"{w}: CPU 0 busy µs per delivery, softirq included (lower is better)", "µs", pick(w, "core_us_per_delivery")))
    idle = [w for w in workloads if w.startswith("idle")]
    if idle:
        w = idle[-1]
        out.append((f"{w}: bytes of RSS per idle subscriber (lower is better)", "B", pick(w, "bytes_per_idle_subscriber")))
    for w in workloads:
        if w.startswith("publish"):
            out.append((f"{w}: publish requests per second (higher is better)", "/s", pick(w, "publish_rps")))
    return out


def svg(combined, title):
    width, bar_h, gap, label_w, value_w = 790, 18, 4, 120, 110
    chart_w = width - label_w - value_w - 20
    parts = []
    y = 40
    for caption, unit, values in panels(combined):
        if not values:
            continue
        servers = server_order(set(values))
        top = max(values.values()) or 1.0
        parts.append(f'<text x="10" y="{y}" class="cap">{escape(caption)}</text>')
        y += 8
        for s in servers:
            v = values[s]
            w = max(1.0, chart_w * v / top)
            color = COLORS.get(s, "#495057")
            parts.append(f'<text x="{label_w}" y="{y + bar_h - 5}" class="lab" text-anchor="end">{escape(s)}</text>')
            parts.append(f'<rect x="{label_w + 6}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
            shown = f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
            parts.append(f'<text x="{label_w + 12 + w:.1f}" y="{y + bar_h - 5}" class="val">{escape(shown)} {unit}</text>')
            y += bar_h + gap
        y += 30
    height = y
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">\n'
        "<style>text{font-family:sans-serif;font-size:12px;fill:#212529}"
        ".cap{font-weight:bold}.title{font-size:15px;font-weight:bold}.val{fill:#495057}</style>\n"
        f'<rect width="{width}" height="{height}" fill="white"/>\n'
        f'<text x="10" y="20" class="title">{escape(title)}</text>\n' + "\n".join(parts) + "\n</svg>\n"
    )


def render(results, out_md, out_svg):
    rows = load(results)
    combined = combine(rows)
    text = table(combined)
    with open(out_md, "w") as f:
        f.write(text)
    modes = sorted({r.get("mode", "") for r in rows} - {""})
    title = "bare-sse and peers, " + (", ".join(modes) or "run") + f" ({len(rows)} runs)"
    busy = sum(1 for r in rows if float(r.get("machine_busy_pct", 0) or 0) > 10)
    if busy:
        title += f"; {busy} runs began on a busy machine: noisy"
    stamps = sorted({r.get("started", "") for r in rows} - {""})
    if stamps:
        title += f"; {stamps[-1]}"
    with open(out_svg, "w") as f:
        f.write(svg(combined, title))
    sys.stdout.write(text)


def main(argv):
    if len(argv) >= 2 and argv[1] == "annotate":
        annotate(argv[2:])
    elif len(argv) == 5 and argv[1] == "render":
        render(argv[2], argv[3], argv[4])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
