"""The printed tables and the issue's targets, checked against one run's figures."""

from __future__ import annotations

import math
import statistics

from .stats import Run


def _f(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _label(latency: float) -> str:
    return f"{latency:g}s"


def throughput(runs: list[Run]) -> str:
    by = {(r.latency, r.name): r for r in runs}
    rows = []
    for r in runs:
        base, lim = by.get((r.latency, "baseline")), by.get((r.latency, "limit"))
        mine = r.name.startswith("chatq")
        vs_base = r.rate / base.rate if mine and base and base.rate else math.nan
        vs_lim = r.rate / lim.rate if mine and lim and lim.rate else math.nan
        rows.append([
            _label(r.latency), r.name, f"{r.jobs}/{r.jobs + r.failed}", _f(r.rate), _f(r.overall_rate),
            _f(vs_base, 1) + ("x" if not math.isnan(vs_base) else ""),
            _f(vs_lim * 100, 0) + ("%" if not math.isnan(vs_lim) else ""),
            f"{r.max_in_flight} / {_f(r.mean_in_flight, 0)}", str(r.check.lost), str(r.check.reordered),
        ])
    return _table(["latency", "contender", "jobs ok", "jobs/s", "overall", "vs baseline", "vs limit",
                   "in flight max / median", "lost", "reordered"], rows)


def overhead(runs: list[Run], label: str = "") -> str:
    rows = []
    for r in runs:
        if not r.to_start:
            continue
        rows.append([
            label or _label(r.latency), r.name,
            *(_f(r.pct("to_start", p)) for p in (50, 95, 99)),
            *(_f(r.pct("to_visible", p)) for p in (50, 95, 99)),
        ])
    return _table(["run", "contender", "start p50", "p95", "p99", "visible p50", "p95", "p99"], rows)


def cpu(runs: list[Run]) -> str:
    groups = ["client", "workers", "server", "redis", "irq", "other"]
    rows = [[_label(r.latency), r.name, *(_f(r.cpu_ms.get(g, math.nan), 2) for g in groups),
             _f(sum(r.cpu_ms.values()), 2)] for r in runs if r.cpu_ms]
    return _table(["latency", "contender", *groups, "total"], rows)


def memory(runs: list[Run]) -> str:
    rows = [[_label(r.latency), r.name, _f(r.peak_rss / 2**20), _f(r.redis_per_session, 0), _f(r.redis_per_job, 0),
             _f(r.keys_per_session, 0), _f(r.keys_per_job, 0)]
            for r in runs if r.name != "limit"]
    return _table(["latency", "contender", "peak worker RSS MiB", "Redis B/session (INFO)", "B/job (INFO)",
                   "B/session (keys)", "B/job (keys)"], rows)


def paired(ratios: dict[float, list[float]]) -> str:
    """Each repeat's chatq/baseline ratio (chatq and the baseline ran back to back) and their median."""
    return "\n".join(f"  {_label(lat)}: " + ", ".join(f"{x:.2f}x" for x in xs) + f"; median {_median(xs):.2f}x"
                     for lat, xs in ratios.items())


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def targets(runs: list[Run], open_runs: list[Run],
            ratios: dict[float, list[float]] | None = None) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for each of the issue's targets that this run measured. With
    repeats, a ratio target uses the median of the paired ratios."""
    by = {(r.latency, r.name): r for r in runs}
    ratios = ratios or {}

    def ratio(latency: float) -> float | None:
        if ratios.get(latency):
            return _median(ratios[latency])
        c, b = by.get((latency, "chatq")), by.get((latency, "baseline"))
        return c.rate / b.rate if c and b and b.rate else None

    out = []
    for latency, factor in ((1.0, 30), (0.25, 10)):
        x = ratio(latency)
        if x is not None:
            out.append((f"{latency:g}s: chatq >= {factor}x baseline", x >= factor, f"{x:.1f}x"))
    held = {name: by[(1.0, name)] for name in ("chatq", "chatq backlog") if (1.0, name) in by}
    if held:
        def in_flight(r: Run) -> float:  # the median over repeats, each repeat's listed
            return _median(r.in_flight_repeats) if r.in_flight_repeats else r.max_in_flight

        def show(r: Run) -> str:
            each = f" (median of {', '.join(map(str, r.in_flight_repeats))})" if r.in_flight_repeats else ""
            return f"{in_flight(r):.0f}{each}"

        out.append(("1s: >= 500 calls in flight", max(in_flight(r) for r in held.values()) >= 500,
                    ", ".join(f"{n.replace('chatq', 'burst').replace('burst backlog', 'backlog')} {show(r)}"
                              for n, r in held.items())))
    c, lim = by.get((0.0, "chatq")), by.get((0.0, "limit"))
    x = ratio(0.0)
    if x is not None:
        label = f"{x:.2f}x" + (f" (median of {len(ratios[0.0])} paired runs)" if ratios.get(0.0) else "")
        out.append(("0s: chatq >= 1.5x baseline", x >= 1.5, label))
    if c and lim and lim.rate:
        out.append(("0s: chatq >= 40% of limit", c.rate >= 0.4 * lim.rate, f"{100 * c.rate / lim.rate:.0f}%"))
    for r in open_runs:
        if r.name == "chatq" and r.to_start:
            worst = max(r.pct("to_start", 99), r.pct("to_visible", 99))
            out.append(("open loop: queue overhead p99 <= 25 ms", worst <= 25, f"{worst:.1f} ms"))
    chatq_runs = [r for r in [*runs, *open_runs] if r.name.startswith("chatq")]
    bad = sum(r.check.lost + r.check.reordered + r.failed for r in chatq_runs)
    out.append(("chatq: zero turns lost or reordered, no failed job", bad == 0, str(bad)))
    return out
