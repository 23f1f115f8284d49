#!/usr/bin/env python3
"""Turns benches/results/*.jsonl into a markdown table and an SVG chart.

Standard library only. Used by benches/compare:

    report.py annotate KEY=VALUE...   < one JSON line  > the line, with fields
    report.py render RESULTS.jsonl OUT.md OUT.svg     (prints the table too)

When a server ran a workload several times (--rounds), the table and chart
show the median of each figure and the worst of the error counts.

Below the table, a second one gives every server's figures as ratios to
bare-sse's (the seeds API) on the same workload of the same results file,
and, when Mercure rows (bare-sse-mercure*) are present, the issue's goals
for them: CPU per delivery within 1.2x of bare-sse's, at most 300 bytes per
idle subscriber, and what a Mercure publish (JWT check, form body) costs
more than a seeds one. When bare-sse-mercure-subs (the same hub with
--mercure-subscriptions) is present beside bare-sse-mercure, a last section
compares them: bytes per idle subscriber on against off, workload by
workload and at the margin, against the issue's 64-byte bound, and the
reads of the whole subscription collection (time to first and last byte,
size, count, the server's RSS while it streamed).
"""

import json
import statistics
import sys
from html import escape

# Server order in tables and charts; unknown servers follow in name order.
SERVERS = [
    "bare-sse",
    "bare-sse-mercure",
    "bare-sse-mercure-pattern",
    "bare-sse-mercure-subs",
    "bare-sse-t2",
    "bare-sse-t2-2cpu",
    "bare-sse-cluster",
    "floor",
    "axum",
    "go",
    "nchan",
]
# The row every ratio is taken against: bare-sse's own (seeds) API.
BASELINE = "bare-sse"
# The goals for the Mercure rows.
MERCURE_PREFIX = "bare-sse-mercure"
GOAL_CPU_RATIO = 1.2
GOAL_IDLE_BYTES = 300
# Active subscriptions (--mercure-subscriptions): the row with them on, the
# row it is compared with (off), and the bound on what they add.
SUBS_ON = "bare-sse-mercure-subs"
SUBS_OFF = "bare-sse-mercure"
GOAL_SUBS_EXTRA_BYTES = 64
LIST_FIELDS = (
    "list_expected",
    "list_subscriptions",
    "list_first_byte_ms",
    "list_last_byte_ms",
    "list_body_bytes",
    "list_rss_before_kb",
    "list_rss_peak_kb",
    "list_rss_growth_kb",
    "list_hwm_before_kb",
    "list_hwm_after_kb",
    "list_rss_samples",
)
COLORS = {
    "bare-sse": "#d9480f",
    "bare-sse-mercure": "#f59f00",
    "bare-sse-mercure-pattern": "#e67700",
    "bare-sse-mercure-subs": "#fab005",
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
            "rss_before_kb",
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
        ) + LIST_FIELDS:
            rec[field] = median(r.get(field) for r in group)
        per_sub = [r.get("bytes_per_idle_subscriber") for r in group]
        per_sub = [v for v in per_sub if isinstance(v, (int, float))]
        rec["bytes_range"] = (min(per_sub), max(per_sub)) if per_sub else None
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
        rec["errors"] += sorted({f"listing: {r['list_error']}" for r in group if r.get("list_error")})
        if any(r.get("list_complete") is False for r in group):
            rec["errors"].append("listing incomplete")
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


# (column title, field, whether the figure is a rate, i.e. higher is better)
RATIO_FIELDS = [
    ("CPU µs/delivery", "cpu_us_per_delivery"),
    ("core µs/delivery", "core_us_per_delivery"),
    ("deliveries/s", "deliveries_per_s"),
    ("bytes/idle sub", "bytes_per_idle_subscriber"),
    ("p50", "latency_p50_us"),
    ("p99", "latency_p99_us"),
    ("publish req/s", "publish_rps"),
    ("CPU µs/req", "cpu_us_per_request"),
    ("core µs/req", "core_us_per_request"),
]


def ratio(combined, server, workload, field):
    """`field` of `server` over the baseline's on the same workload."""
    r = combined.get((server, workload))
    b = combined.get((BASELINE, workload))
    if r is None or b is None:
        return None
    if field in ("publish_rps", "cpu_us_per_request", "core_us_per_request") and r["deliveries_per_s"] is not None:
        return None  # request figures only mean something without subscribers
    v, base = r.get(field), b.get(field)
    if v is None or not base:
        return None
    return v / base


def fmt_ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def ratio_table(combined):
    """Every server's figures over bare-sse's on the same workload."""
    workloads = []
    for _, w in combined:
        if w not in workloads:
            workloads.append(w)
    servers = [s for s in server_order({s for s, _ in combined}) if s != BASELINE]
    head = "| workload | server / " + BASELINE + " | " + " | ".join(t for t, _ in RATIO_FIELDS) + " | runs began busy |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for w in workloads:
        if (BASELINE, w) not in combined:
            continue
        for s in servers:
            if (s, w) not in combined:
                continue
            cells = [fmt_ratio(ratio(combined, s, w, f)) for _, f in RATIO_FIELDS]
            if all(c == "-" for c in cells):
                continue
            busy = max(combined[(s, w)]["busy"], combined[(BASELINE, w)]["busy"])
            note = f"{busy:.0f}%" if busy > 10 else ""
            lines.append(f"| {w} | {s} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def workload_size(name):
    """The subscriber count in a workload's name: idle-10k -> 10000."""
    tail = name.rsplit("-", 1)[-1]
    try:
        return float(tail[:-1]) * 1000 if tail.endswith("k") else float(tail)
    except ValueError:
        return 0.0


def largest(workloads, prefix):
    named = [w for w in workloads if w.startswith(prefix + "-")]
    return max(named, key=workload_size) if named else None


def mercure_goals(combined):
    """The issue's goals for each Mercure row, met or not."""
    workloads = []
    for _, w in combined:
        if w not in workloads:
            workloads.append(w)
    mercure = [s for s in server_order({s for s, _ in combined}) if s.startswith(MERCURE_PREFIX)]
    if not mercure:
        return ""
    lines = ["| goal | workload | server | " + BASELINE + " | Mercure | ratio | met |", "|---|---|---|---|---|---|---|"]

    def verdict(ok):
        return "-" if ok is None else ("yes" if ok else "**no**")

    fanout = largest(workloads, "fanout")
    for w in [fanout] + [x for x in (largest(workloads, "burst"), largest(workloads, "paced")) if x]:
        if w is None:
            continue
        for s in mercure:
            base = combined.get((BASELINE, w), {}).get("cpu_us_per_delivery")
            mine = combined.get((s, w), {}).get("cpu_us_per_delivery")
            r = ratio(combined, s, w, "cpu_us_per_delivery")
            goal = f"CPU µs/delivery ≤ {GOAL_CPU_RATIO}x" + ("" if w == fanout else " (shown, goal is on fanout)")
            ok = None if r is None or w != fanout else r <= GOAL_CPU_RATIO
            lines.append(
                f"| {goal} | {w} | {s} | {fmt(base, 2)} | {fmt(mine, 2)} | {fmt_ratio(r)} | {verdict(ok)} |"
            )
    idle = largest(workloads, "idle")
    if idle:
        for s in mercure:
            base = combined.get((BASELINE, idle), {}).get("bytes_per_idle_subscriber")
            mine = combined.get((s, idle), {}).get("bytes_per_idle_subscriber")
            ok = None if mine is None else mine <= GOAL_IDLE_BYTES
            lines.append(
                f"| bytes/idle sub ≤ {GOAL_IDLE_BYTES} | {idle} | {s} | {fmt(base)} | {fmt(mine)} "
                f"| {fmt_ratio(ratio(combined, s, idle, 'bytes_per_idle_subscriber'))} | {verdict(ok)} |"
            )
    # What each subscriber adds beyond the server's one-time costs (the first
    # URL pattern, say, pages in code and tables): RSS growth between the
    # two largest idle workloads, each from its own fresh server.
    idles = sorted((w for w in workloads if w.startswith("idle-")), key=workload_size)
    if len(idles) >= 2:
        small, big = idles[-2], idles[-1]

        def marginal(server):
            a, b = combined.get((server, small)), combined.get((server, big))
            if not a or not b or a["rss_idle_kb"] is None or b["rss_idle_kb"] is None:
                return None
            subs = (b["subscribers_connected"] or 0) - (a["subscribers_connected"] or 0)
            return (b["rss_idle_kb"] - a["rss_idle_kb"]) * 1024 / subs if subs > 0 else None

        base = marginal(BASELINE)
        for s in mercure:
            mine = marginal(s)
            r = mine / base if mine is not None and base else None
            lines.append(
                f"| marginal bytes/idle sub, {small} to {big} (shown) | {big} | {s} | {fmt(base)} | {fmt(mine)} "
                f"| {fmt_ratio(r)} | - |"
            )
    publish = largest(workloads, "publish")
    if publish:
        for s in mercure:
            b = combined.get((BASELINE, publish), {})
            m = combined.get((s, publish), {})
            for label, field in (("CPU µs/req", "cpu_us_per_request"), ("core µs/req", "core_us_per_request")):
                base, mine = b.get(field), m.get(field)
                extra = f", {mine - base:+.1f} µs per publish" if base is not None and mine is not None else ""
                lines.append(
                    f"| publish cost reported ({label}{extra}) | {publish} | {s} | {fmt(base, 1)} | {fmt(mine, 1)} "
                    f"| {fmt_ratio(ratio(combined, s, publish, field))} | reported |"
                )
    return "\n".join(lines) + "\n"


def subscriptions_section(combined):
    """Active subscriptions on (SUBS_ON) against off (SUBS_OFF): memory per
    idle subscriber, and the reads of the whole collection."""
    workloads = []
    for _, w in combined:
        if w not in workloads:
            workloads.append(w)
    text = ""
    both = [w for w in workloads if (SUBS_ON, w) in combined and (SUBS_OFF, w) in combined]
    memory = [
        w
        for w in both
        if combined[(SUBS_ON, w)]["bytes_per_idle_subscriber"] is not None
        and combined[(SUBS_OFF, w)]["bytes_per_idle_subscriber"] is not None
    ]
    memory.sort(key=workload_size)
    if memory:
        goal_at = memory[-1]
        lines = [
            f"| workload | subs off / on | bytes/idle sub off (range) | on (range) | on − off "
            f"| ≤ {GOAL_SUBS_EXTRA_BYTES} B more | runs |",
            "|---|---|---|---|---|---|---|",
        ]

        def spread(rec):
            lo_hi = rec["bytes_range"]
            return "" if lo_hi is None or lo_hi[0] == lo_hi[1] else f" ({lo_hi[0]:,.0f}–{lo_hi[1]:,.0f})"

        for w in memory:
            off, on = combined[(SUBS_OFF, w)], combined[(SUBS_ON, w)]
            extra = on["bytes_per_idle_subscriber"] - off["bytes_per_idle_subscriber"]
            met = ("yes" if extra <= GOAL_SUBS_EXTRA_BYTES else "**no**") if w == goal_at else "(shown)"
            lines.append(
                f"| {w} | {fmt(off['subscribers_connected'])} / {fmt(on['subscribers_connected'])} "
                f"| {fmt(off['bytes_per_idle_subscriber'])}{spread(off)} | {fmt(on['bytes_per_idle_subscriber'])}{spread(on)} "
                f"| {extra:+,.0f} | {met} | {off['runs']} / {on['runs']} |"
            )
        # What each further subscriber adds, one-time costs left out: RSS
        # growth from one idle workload to the next, each on a fresh server.
        idles = [w for w in memory if w.startswith("idle-")]
        for small, big in zip(idles, idles[1:]):

            def marginal(server):
                a, b = combined[(server, small)], combined[(server, big)]
                if a["rss_idle_kb"] is None or b["rss_idle_kb"] is None:
                    return None
                subs = (b["subscribers_connected"] or 0) - (a["subscribers_connected"] or 0)
                return (b["rss_idle_kb"] - a["rss_idle_kb"]) * 1024 / subs if subs > 0 else None

            off, on = marginal(SUBS_OFF), marginal(SUBS_ON)
            extra = f"{on - off:+,.0f}" if on is not None and off is not None else "-"
            lines.append(f"| marginal, {small} to {big} | | {fmt(off)} | {fmt(on)} | {extra} | (shown) | |")
        text += (
            f"\nActive subscriptions: {SUBS_ON} (--mercure-subscriptions) against {SUBS_OFF}, "
            "bytes of RSS per idle subscriber (medians; range over the runs):\n\n" + "\n".join(lines) + "\n"
        )
    listed = [w for w in workloads if (SUBS_ON, w) in combined and combined[(SUBS_ON, w)]["list_expected"] is not None]
    if listed:
        lines = [
            "| workload | listed / expected | first byte ms | last byte ms | body MB | bytes/subscription "
            "| RSS before MB | peak during MB | growth kB | VmHWM before → after MB | samples |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for w in listed:
            r = combined[(SUBS_ON, w)]
            per = (
                fmt(r["list_body_bytes"] / r["list_subscriptions"])
                if r["list_body_bytes"] and r["list_subscriptions"]
                else "-"
            )
            lines.append(
                f"| {w} | {fmt(r['list_subscriptions'])} / {fmt(r['list_expected'])} "
                f"| {fmt(r['list_first_byte_ms'], 1)} | {fmt(r['list_last_byte_ms'], 1)} "
                f"| {fmt(r['list_body_bytes'], 2, 1e6)} | {per} "
                f"| {fmt(r['list_rss_before_kb'], 1, 1024)} | {fmt(r['list_rss_peak_kb'], 1, 1024)} "
                f"| {fmt(r['list_rss_growth_kb'])} "
                f"| {fmt(r['list_hwm_before_kb'], 1, 1024)} → {fmt(r['list_hwm_after_kb'], 1, 1024)} "
                f"| {fmt(r['list_rss_samples'])} |"
            )
        text += (
            f"\n{SUBS_ON}: GET /.well-known/mercure/subscriptions in full at the end of each run "
            "(medians; RSS sampled every ms while it streamed):\n\n" + "\n".join(lines) + "\n"
        )
    return text


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
            out.append((f"{w}: server CPU µs per request (lower is better)", "µs", pick(w, "cpu_us_per_request")))

    def ratios(workload, field):
        servers = {s for (s, ww) in combined if ww == workload and s.startswith(MERCURE_PREFIX)}
        values = {s: ratio(combined, s, workload, field) for s in servers}
        return {s: v for s, v in values.items() if v is not None}

    # The Mercure rows against bare-sse's seeds API, workload by workload
    # (other servers' ratios are in the table).
    if any(s.startswith(MERCURE_PREFIX) for s, _ in combined):
        for w in workloads:
            if any(r["deliveries_per_s"] for (s, ww), r in combined.items() if ww == w):
                out.append(
                    (
                        f"{w}: CPU µs per delivery ÷ {BASELINE}'s (goal for Mercure ≤ {GOAL_CPU_RATIO})",
                        "x",
                        ratios(w, "cpu_us_per_delivery"),
                    )
                )
            elif w.startswith("publish"):
                out.append((f"{w}: CPU µs per request ÷ {BASELINE}'s", "x", ratios(w, "cpu_us_per_request")))
    return out


def svg(combined, title):
    width, bar_h, gap, label_w, value_w = 840, 18, 4, 170, 110
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
    ratios = ratio_table(combined)
    if ratios:
        text += f"\nRatios to {BASELINE} (seeds API) on the same workload, same results:\n\n" + ratios
    goals = mercure_goals(combined)
    if goals:
        text += "\nMercure goals:\n\n" + goals
    text += subscriptions_section(combined)
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
