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


def _key(r: Run) -> tuple[float, str]:
    return r.latency, r.workload


def throughput(runs: list[Run], ref: str = "baseline") -> str:
    """One row per run; chatq's rates against the ``ref`` baseline's and the limit's on the same workload."""
    by = {(*_key(r), r.name): r for r in runs}
    rows = []
    for r in runs:
        base, lim = by.get((*_key(r), ref)), by.get((*_key(r), "limit"))
        mine = r.name.startswith("chatq")
        vs_base = r.rate / base.rate if mine and base and base.rate else math.nan
        vs_lim = r.rate / lim.rate if mine and lim and lim.rate else math.nan
        rows.append([
            _label(r.latency), r.workload, r.name, f"{r.jobs}/{r.total}", _f(r.rate), _f(r.overall_rate),
            _f(vs_base, 1) + ("x" if not math.isnan(vs_base) else ""),
            _f(vs_lim * 100, 0) + ("%" if not math.isnan(vs_lim) else ""),
            f"{r.max_in_flight} / {_f(r.mean_in_flight, 0)}", str(r.check.lost), str(r.check.reordered),
        ])
    return _table(["latency", "workload", "contender", "jobs ok", "jobs/s", "overall", f"vs {ref}", "vs limit",
                   "in flight max / median", "lost", "reordered"], rows)


def backlog(runs: list[Run]) -> str:
    """What a node does with a queued workload: calls in flight, jobs/s, how long, at what cost."""
    rows = []
    for r in runs:
        done = f"{r.jobs}/{r.total}" + (f" in {r.budget:g}s" if r.budget else "")
        per_session = r.wakeups / r.sessions if r.wakeups >= 0 and r.sessions else math.nan
        rows.append([
            _label(r.latency), r.workload, done, f"{r.max_in_flight} / {_f(r.mean_in_flight, 0)}", _f(r.rate),
            _f(r.elapsed), _f(r.first_to_last), _f(r.submit_seconds),
            f"{_f(r.submit_ms.get('new', math.nan), 2)} / {_f(r.submit_ms.get('existing', math.nan), 2)}",
            _f(per_session, 2), _f(r.peak_rss / 2**20, 0), f"{r.peak_procs} / {r.peak_threads}",
        ])
    return _table(["latency", "workload", "jobs done", "in flight max / median", "jobs/s", "taken up->last s",
                   "1st submit->last s", "submit s", "submit ms p50 new / existing", "wake-ups/session",
                   "node peak RSS MiB", "node procs / threads"], rows)


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
    groups = ["submit", "wait", "workers", "server", "redis", "irq", "other"]
    rows = []
    for r in runs:
        if not r.cpu_ms:
            continue
        client = r.cpu_ms.get("submit", 0.0) + r.cpu_ms.get("wait", 0.0)
        partial = f" ({r.total - r.unfinished} of {r.total} jobs)" if r.unfinished else ""
        rows.append([_label(r.latency), r.workload, r.name + partial, _f(client, 2),
                     *(_f(r.cpu_ms.get(g, math.nan), 2) for g in groups), _f(sum(r.cpu_ms.values()), 2)])
    return _table(["latency", "workload", "contender", "client", *groups, "total"], rows)


def memory(runs: list[Run]) -> str:
    rows = [[_label(r.latency), r.workload, r.name, _f(r.peak_rss / 2**20), _f(r.redis_per_session, 0),
             _f(r.redis_per_job, 0), _f(r.keys_per_session, 0), _f(r.keys_per_job, 0)]
            for r in runs if r.name != "limit"]
    return _table(["latency", "workload", "contender", "peak worker RSS MiB", "Redis B/session (INFO)",
                   "B/job (INFO)", "B/session (keys)", "B/job (keys)"], rows)


def paired(ratios: dict[tuple[float, str], list[float]]) -> str:
    """Each repeat's chatq/baseline ratio (chatq and the baseline ran back to back) and their median."""
    return "\n".join(f"  {_label(lat)} vs {name}: " + ", ".join(f"{x:.2f}x" for x in xs)
                     + f"; median {_median(xs):.2f}x" for (lat, name), xs in ratios.items())


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


GIB = 2**30


def targets(runs: list[Run], open_runs: list[Run], ratios: dict[tuple[float, str], list[float]] | None = None,
            preset: str | None = None) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for each target that this run measured: the default run's, or a
    preset's (issue 16: ``capacity``, ``peer``). With repeats, a ratio uses the median of the
    paired ratios."""
    ratios = ratios or {}
    if preset == "capacity":
        out = _capacity_targets(runs)
    elif preset == "peer":
        out = []
        for (latency, name), xs in ratios.items():
            if name == "baseline-threads":
                each = f" (median of {len(xs)} paired runs: {', '.join(f'{x:.2f}x' for x in xs)})"
                out.append((f"{_label(latency)}: chatq >= 1.5x the threads-pool peer", _median(xs) >= 1.5,
                            f"{_median(xs):.2f}x" + (each if len(xs) > 1 else "")))
    else:
        out = _default_targets(runs, open_runs, ratios)
    chatq_runs = [r for r in [*runs, *open_runs] if r.name.startswith("chatq")]
    bad = sum(r.check.lost + r.check.reordered + r.failed for r in chatq_runs)
    out.append(("chatq: zero turns lost or reordered, no failed job", bad == 0, str(bad)))
    return out


def _client(r: Run) -> float:
    return r.cpu_ms.get("submit", 0.0) + r.cpu_ms.get("wait", 0.0)


def _capacity_targets(runs: list[Run]) -> list[tuple[str, bool, str]]:
    """Issue 16: calls in flight, time, memory and flat CPU per job of one default `chatq worker`."""
    backlog = {_key(r): r for r in runs if r.name == "chatq backlog"}
    small, wide = backlog.get((1.0, "600x5")), backlog.get((1.0, "3000x1"))
    r5, r30 = backlog.get((5.0, "3000x1")), backlog.get((30.0, "6000x1"))
    out = []

    def done(r: Run) -> str:
        return f"{r.jobs}/{r.total} done in the {r.budget:g}s budget" if r.unfinished else ""

    if r5:
        out.append(("5s 3000x1: >= 1500 calls in flight", r5.max_in_flight >= 1500, str(r5.max_in_flight)))
        out.append(("5s 3000x1: all done within 15 s of the first submission", r5.first_to_last <= 15,
                    done(r5) or f"{r5.first_to_last:.1f}s (submitting took {r5.submit_seconds:.1f}s)"))
    if r30:
        out.append(("30s 6000x1: >= 4000 calls in flight", r30.max_in_flight >= 4000, str(r30.max_in_flight)))
        out.append(("30s 6000x1: node peak RSS < 1.5 GiB at >= 4000 in flight",
                    r30.max_in_flight >= 4000 and r30.peak_rss < 1.5 * GIB,
                    f"{r30.peak_rss / 2**20:,.0f} MiB at {r30.max_in_flight} in flight"))
    pairs = [("1s 3000x1 vs 1s 600x5", wide, small), ("5s 3000x1 vs 1s 3000x1", r5, wide),
             ("30s 6000x1 vs 1s 3000x1", r30, wide)]
    for label, r, ref in pairs:
        if not (r and ref):
            continue
        for group, cost in (("workers", lambda x: x.cpu_ms.get("workers", math.nan)), ("client", _client)):
            x = cost(r) / cost(ref) if cost(ref) else math.nan
            partial = f"; {done(r)}" if r.unfinished else ""
            out.append((f"CPU per job flat, {group}: {label} <= 1.3x", x <= 1.3,
                        f"{cost(r):.2f} vs {cost(ref):.2f} ms = {x:.2f}x{partial}"))
    if small and small.submit_ms.get("existing"):
        new, old = small.submit_ms["new"], small.submit_ms["existing"]
        out.append(("submitting to a new session <= 1.3x an existing one (1s 600x5)", new <= 1.3 * old,
                    f"{new:.2f} vs {old:.2f} ms = {new / old:.2f}x"))
    return out


def _default_targets(runs: list[Run], open_runs: list[Run],
                     ratios: dict[tuple[float, str], list[float]]) -> list[tuple[str, bool, str]]:
    """The earlier round's targets: a node of 3 x 200 threads against Celery's prefork default."""
    by = {(r.latency, r.name): r for r in runs}

    def ratio(latency: float) -> float | None:
        if ratios.get((latency, "baseline")):
            return _median(ratios[(latency, "baseline")])
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
        n = len(ratios.get((0.0, "baseline"), []))
        out.append(("0s: chatq >= 1.5x baseline", x >= 1.5,
                    f"{x:.2f}x" + (f" (median of {n} paired runs)" if n > 1 else "")))
    if c and lim and lim.rate:
        out.append(("0s: chatq >= 40% of limit", c.rate >= 0.4 * lim.rate, f"{100 * c.rate / lim.rate:.0f}%"))
    for r in open_runs:
        if r.name == "chatq" and r.to_start:
            worst = max(r.pct("to_start", 99), r.pct("to_visible", 99))
            out.append(("open loop: queue overhead p99 <= 25 ms", worst <= 25, f"{worst:.1f} ms"))
    return out


def print_targets(checks: list[tuple[str, bool, str]]) -> None:
    """The run's target lines, as every benchmark prints them: ``[met]`` or ``[MISSED]``, then the figure."""
    print("\nTargets")
    for name, ok, measured in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {measured}")
