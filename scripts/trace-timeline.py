#!/usr/bin/env python3
"""Render a stitch profile trace (Chrome trace-event JSON from `stitch profile
--trace`) as a self-contained HTML timeline, for a quick look or a screenshot
when Perfetto is out of reach.

    scripts/trace-timeline.py TRACE.json OUT.html [--run N] [--title TEXT]

Draws one run (default: the last): a track per device, each step a box coloured
by kind (kernel, fused, copy host-to-device, copy device-to-host, fallback),
plus the run's totals per kind. Uses only the standard library.
"""
import argparse
import html
import json

COLORS = {
    "kernel": "#4e79a7",
    "fused": "#f28e2b",
    "copy_h2d": "#e15759",
    "copy_d2h": "#b07aa1",
    "copy_d2d": "#ff9da7",
    "fallback": "#59a14f",
    "state": "#9c755f",
    "input": "#bab0ac",
    "constant": "#d4d4d4",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("out")
    ap.add_argument("--run", type=int, default=-1)
    ap.add_argument("--title", default="stitch profile")
    a = ap.parse_args()
    doc = json.load(open(a.trace))
    events = doc["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    steps = [e for e in events if e.get("ph") == "X"]
    runs = sorted({e["args"]["run"] for e in steps})
    run = runs[a.run]
    steps = [e for e in steps if e["args"]["run"] == run]
    label = steps[0]["args"]["label"] if steps else ""
    t0 = min(e["ts"] for e in steps)
    t1 = max(e["ts"] + e["dur"] for e in steps)
    span = max(t1 - t0, 1e-9)
    width, row_h, left = 1300, 46, 90
    tids = sorted({e["tid"] for e in steps})
    svg = [f'<svg width="{width + left + 10}" height="{len(tids) * row_h + 40}" xmlns="http://www.w3.org/2000/svg">']
    for i, tid in enumerate(tids):
        y = 10 + i * row_h
        svg.append(f'<text x="4" y="{y + 24}" font-size="13" font-family="monospace">{html.escape(tracks.get(tid, str(tid)))}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{width}" height="{row_h - 8}" fill="#f4f4f4"/>')
        for e in steps:
            if e["tid"] != tid:
                continue
            x = left + (e["ts"] - t0) / span * width
            w = max(e["dur"] / span * width, 0.6)
            c = COLORS.get(e["cat"], "#888")
            tip = html.escape(f'{e["name"]} [{e["cat"]}] {e["dur"]:.1f} us')
            svg.append(f'<rect x="{x:.2f}" y="{y + 2}" width="{w:.2f}" height="{row_h - 12}" fill="{c}"><title>{tip}</title></rect>')
    y = 10 + len(tids) * row_h + 18
    for k in range(0, 11):
        x = left + k * width / 10
        svg.append(f'<text x="{x:.0f}" y="{y}" font-size="11" font-family="sans-serif" text-anchor="middle">{k * span / 10 / 1000:.2f} ms</text>')
    svg.append("</svg>")
    totals = {}
    for e in steps:
        t = totals.setdefault(e["cat"], [0.0, 0, 0])
        t[0] += e["dur"]
        t[1] += 1
        t[2] += e["args"].get("bytes", 0)
    rows = "".join(
        f'<tr><td><span class="sw" style="background:{COLORS.get(k, "#888")}"></span>{html.escape(k)}</td>'
        f'<td>{v[1]}</td><td>{v[0] / 1000:.3f}</td><td>{100 * v[0] / max(sum(t[0] for t in totals.values()), 1e-9):.1f}%</td><td>{v[2]}</td></tr>'
        for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])
    )
    top = sorted(steps, key=lambda e: -e["dur"])[:12]
    top_rows = "".join(
        f'<tr><td>{html.escape(e["args"]["op"])}</td><td>{html.escape(e["cat"])}</td><td>{html.escape(e["args"]["device"])}</td>'
        f'<td>{e["dur"]:.1f}</td><td>{html.escape(e["args"]["node"])}</td></tr>'
        for e in top
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(a.title)}</title>
<style>body{{font-family:sans-serif;margin:16px;color:#222}} table{{border-collapse:collapse;margin:8px 24px 8px 0;font-size:13px}}
td,th{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}} .sw{{display:inline-block;width:11px;height:11px;margin-right:6px}}
.row{{display:flex;align-items:flex-start}}</style></head><body>
<h2>{html.escape(a.title)}</h2>
<p>{html.escape(label)}: {len(steps)} plan steps, {span / 1000:.3f} ms from first start to last end ({len(runs)} runs in the trace).</p>
{''.join(svg)}
<div class="row"><table><tr><th>kind</th><th>steps</th><th>ms</th><th>share</th><th>bytes</th></tr>{rows}</table>
<table><tr><th>op</th><th>kind</th><th>device</th><th>µs</th><th>node</th></tr>{top_rows}</table></div>
</body></html>"""
    open(a.out, "w").write(page)


if __name__ == "__main__":
    main()
