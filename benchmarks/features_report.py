"""The tables ``bench_features.py`` prints and writes: medians over rounds, ratios to the baseline, the targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

BASELINE = "apikey"

FIGURES = [
    # key, scenario, field, label, better
    ("rps", "ns_c64", "rps", "RPS, non-streaming c=64", "higher"),
    ("cpu_req", "ns_c64", "cpu_ms_per_req", "CPU ms / request, c=64", "lower"),
    ("lat", "ns_c1", "lat_p50_ms", "latency p50 ms, c=1", "lower"),
    ("cpu_chunk", "st0_c16", "cpu_us_per_chunk", "CPU µs / chunk, 50 back to back, c=16", "lower"),
    ("chunks_s", "st0_c16", "chunks_per_s", "chunks/s, c=16", "higher"),
    ("ttfc", "st0_c1", "ttfc_p50_ms", "TTFC p50 ms, 50 back to back, c=1", "lower"),
    ("ttfc_paced", "st5_c1", "ttfc_p50_ms", "TTFC p50 ms, 10 chunks 5 ms apart, c=1", "lower"),
]


def values(raw: list[dict[str, Any]], variant: str, scenario: str, field: str) -> list[float]:
    return [r[field] for r in raw if r["variant"] == variant and r["scenario"] == scenario and r.get(field) is not None]


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def report(raw: list[dict[str, Any]], variants: list[str], scan: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    med: dict[tuple[str, str], float | None] = {}
    lines = [f"Run `{meta['stamp']}`: {meta['rounds']} rounds x {meta['duration']:g} s per measurement; "]
    lines[0] += "median over rounds, per-round spread (min-max) in brackets. Ratios: variant ÷ `apikey`."
    lines += ["", "| figure | " + " | ".join(f"`{v}`" for v in variants) + " |"]
    lines.append("|---|" + "---:|" * len(variants))
    for key, scen, field, label, _ in FIGURES:
        cells = []
        for v in variants:
            xs = values(raw, v, scen, field)
            m = statistics.median(xs) if xs else None
            med[(v, key)] = m
            spread = f" ({fmt(min(xs))}-{fmt(max(xs))})" if len(xs) > 1 else ""
            cells.append(fmt(m) + spread)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base = BASELINE if BASELINE in variants else variants[0]
    for key, _, _, label, _ in FIGURES:
        cells = []
        for v in variants:
            a, b = med.get((v, key)), med.get((base, key))
            cells.append(f"{a / b:.2f}x" if a is not None and b else "—")
        lines.append(f"| {label} ÷ `{base}` | " + " | ".join(cells) + " |")
    errs = [sum(r["errors"] for r in raw if r["variant"] == v) for v in variants]
    lines.append("| errors (all scenarios, all rounds) | " + " | ".join(str(e) for e in errs) + " |")
    waits = []
    for v in variants:
        cpu = sum(r["cpu_s"] for r in raw if r["variant"] == v)
        wait = sum(r["wait_s"] for r in raw if r["variant"] == v)
        waits.append(f"{wait:.1f} s / {cpu:.1f} s")  # main thread wait / process-tree CPU
    lines.append("| gateway run-queue wait / CPU over the run | " + " | ".join(waits) + " |")
    db = [values(raw, v, "ns_c64", "db_cpu_ms_per_req") for v in variants]
    if any(db):
        cells = [f"{fmt(statistics.median(xs))} ({fmt(min(xs))}-{fmt(max(xs))})" if xs else "—" for xs in db]
        lines.append("| PostgreSQL server CPU ms / request, c=64 (same machine) | " + " | ".join(cells) + " |")

    # targets
    def ratio(v: str, key: str) -> float | None:
        a, b = med.get((v, key)), med.get((base, key))
        return a / b if a is not None and b else None

    def diff(v: str, key: str) -> float | None:
        a, b = med.get((v, key)), med.get((base, key))
        return a - b if a is not None and b is not None else None

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("✅ pass" if ok else "❌ miss")

    rows: list[tuple[str, str, str, str]] = []

    def add(issue: str, what: str, value: float | None, unit: str, target: str, ok: Callable[[float], bool]) -> None:
        shown = "—" if value is None else (f"{value:.2f}x" if unit == "x" else f"{value:+.3f} {unit}")
        if unit == "%":
            shown = "—" if value is None else f"{value * 100:.1f} %"
        rows.append((issue, what, shown, f"{target} {verdict(None if value is None else ok(value))}"))

    if "master" in variants and "apikey" in variants:
        r = med.get(("apikey", "rps")), med.get(("master", "rps"))
        v = r[0] / r[1] if r[0] and r[1] else None
        add("3", "`apikey` RPS c=64 ÷ `master`", v, "%", "≥ 95 %", lambda x: x >= 0.95)
    for v in ("accounting-sqlite", "accounting-pg"):
        if v in variants:
            add("4", f"`{v}` RPS c=64 ÷ `apikey`", ratio(v, "rps"), "%", "≥ 80 %", lambda x: x >= 0.80)
    if "dlp" in variants:
        add("7", "`dlp` CPU µs/chunk ÷ `apikey` (c=16)", ratio("dlp", "cpu_chunk"), "x", "≤ 2x", lambda x: x <= 2)
        add("7", "`dlp` - `apikey` TTFC p50, back to back", diff("dlp", "ttfc"), "ms", "≤ +1 ms", lambda x: x <= 1)
        add("7", "`dlp` - `apikey` TTFC p50, paced", diff("dlp", "ttfc_paced"), "ms", "≤ +1 ms", lambda x: x <= 1)
    if scan is not None:
        rows.append(
            (
                "7",
                f"request scan, {scan['chars'] // 1000} KB prompt, {scan['detectors']} detectors, in-process",
                f"{scan['ms_median']:.2f} ms (min {scan['ms_min']:.2f}, max {scan['ms_max']:.2f}; "
                f"clean prompt {scan['clean_ms_median']:.2f})",
                f"< 5 ms {verdict(scan['ms_median'] < 5)}",
            )
        )
    lines += ["", "| issue | figure | this run | target |", "|---|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]

    per_round = []
    for v in variants:
        if v == base:
            continue
        rs = {r["round"]: r["rps"] for r in raw if r["variant"] == v and r["scenario"] == "ns_c64"}
        bs = {r["round"]: r["rps"] for r in raw if r["variant"] == base and r["scenario"] == "ns_c64"}
        per = [f"{rs[k] / bs[k] * 100:.0f}" for k in sorted(rs) if bs.get(k)]
        per_round.append(f"`{v}` {', '.join(per)}")
    lines += ["", f"Per-round RPS c=64 ÷ `{base}` (same round, %): " + "; ".join(per_round) + "."]
    return "\n".join(lines) + "\n"
