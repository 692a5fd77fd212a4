"""Figures for the README and the eval directory: accuracy vs cost, accuracy vs executability α
(one run, or a study's seeds), RL training curves, and a study's sensitivity to the world.

Rendered with the Agg backend (no display needed), sized to stay readable when a README shows
them at about 700 px wide: large fonts, one legend, axes labelled with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
         "xtick.labelsize": 11, "ytick.labelsize": 11}
MARKERS = "osD^v<>PX*h"
USD_SCALE = 1000  # plot cost per 1,000 problems: per-problem costs are fractions of a cent


def isolated(points: Sequence[tuple[float, float]], near: float = 0.06) -> list[bool]:
    """For each point, whether no other lies within `near` of the x and y spans of all points
    (a label there would collide with a neighbour's; the legend still names every point)."""
    spans = [max(v) - min(v) or 1.0 for v in zip(*points)] if points else [1.0, 1.0]
    return [all(abs(x - u) > near * spans[0] or abs(y - v) > near * spans[1]
                for j, (u, v) in enumerate(points) if j != i)
            for i, (x, y) in enumerate(points)]


def _save(fig, ax, path: Path) -> Path:
    """Grid, legend and layout of a one-panel figure, written to `path`."""
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_vs_cost(rows: Sequence[Mapping], path: str | Path) -> Path:
    """One point per method: x = core USD per 1,000 problems, y = accuracy with its 95% CI;
    points with room beside them are also labelled in place."""
    path = Path(path)
    points = [(r["usd_per_problem"] * USD_SCALE, 100 * r["accuracy"]) for r in rows]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        for i, (r, (x, y), label) in enumerate(zip(rows, points, isolated(points))):
            lo, hi = (100 * v for v in r["accuracy_ci"])
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt=MARKERS[i % len(MARKERS)],
                        markersize=9, capsize=5, elinewidth=1.5, label=r["method"])
            if label:
                ax.annotate(r["method"], (x, y), xytext=(7, 4), textcoords="offset points",
                            fontsize=10, color=f"C{i % 10}")
        ax.set_xlabel(f"core cost (USD per {USD_SCALE:,} problems)")
        ax.set_ylabel("accuracy (%, 95% Wilson CI)")
        ax.set_title("Accuracy vs core API cost")
        return _save(fig, ax, path)


def accuracy_vs_alpha(rows: Sequence[Mapping], path: str | Path) -> Path | None:
    """One point per guide row: x = executability α, y = accuracy, each with its 95% CI; the
    core alone (no strategy to follow) is a horizontal reference line. None when no row has α."""
    guided = [r for r in rows if r.get("executability") is not None]
    if not guided:
        return None
    path = Path(path)
    points = [(100 * r["executability"], 100 * r["accuracy"]) for r in guided]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        for r in rows:
            if r.get("executability") is None and r["method"] == "core_only":
                ax.axhline(100 * r["accuracy"], color="0.5", linestyle="--", linewidth=1.2,
                           label=f"{r['method']} (no strategy)")
        for i, (r, (x, y), label) in enumerate(zip(guided, points, isolated(points))):
            ylo, yhi = (100 * v for v in r["accuracy_ci"])
            xlo, xhi = (100 * v for v in r["executability_ci"])
            ax.errorbar([x], [y], xerr=[[x - xlo], [xhi - x]], yerr=[[y - ylo], [yhi - y]],
                        fmt=MARKERS[i % len(MARKERS)], markersize=9, capsize=5, elinewidth=1.5,
                        color=f"C{i % 10}", label=r["method"])
            if label:
                ax.annotate(r["method"], (x, y), xytext=(7, 4), textcoords="offset points",
                            fontsize=10, color=f"C{i % 10}")
        ax.set_xlabel("executability α (% of strategies the core followed, 95% Wilson CI)")
        ax.set_ylabel("accuracy (%, 95% Wilson CI)")
        ax.set_title("Accuracy vs executability")
        ax.set_xlim(-3, 103)
        return _save(fig, ax, path)


def seeds_accuracy_vs_alpha(rows: Sequence[Mapping], path: str | Path) -> Path | None:
    """A study's rows: each seed a small point, the mean ± sd over seeds a large one with bars;
    the core alone's mean accuracy a horizontal reference line. None when no row has α."""
    guided = [r for r in rows if r.get("executability") is not None]
    if not guided:
        return None
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        for r in rows:
            if r["method"] == "core_only" and r.get("accuracy") is not None:
                ax.axhline(100 * r["accuracy"]["mean"], color="0.5", linestyle="--",
                           linewidth=1.2, label="core_only, mean (no strategy)")
        for i, r in enumerate(guided):
            acc, alpha, color = r["accuracy"], r["executability"], f"C{i % 10}"
            ax.scatter([100 * v for v in alpha["per_seed"]], [100 * v for v in acc["per_seed"]],
                       s=18, color=color, alpha=0.45)
            ax.errorbar([100 * alpha["mean"]], [100 * acc["mean"]], xerr=[100 * alpha["sd"]],
                        yerr=[100 * acc["sd"]], fmt=MARKERS[i % len(MARKERS)], markersize=9,
                        capsize=5, elinewidth=1.5, color=color, label=r["method"])
        ax.set_xlabel("executability α (% of strategies the core followed; mean ± sd over seeds)")
        ax.set_ylabel("accuracy (%; mean ± sd, small points: seeds)")
        ax.set_title(f"Accuracy vs executability over {len(guided[0]['accuracy']['per_seed'])} seeds")
        ax.set_xlim(-3, 103)
        return _save(fig, ax, path)


def _series(records: Sequence[Mapping], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return tuple(list(a) for a in zip(*pts)) if pts else ([], [])


def reward_keys(records: Sequence[Mapping]) -> list[str]:
    """Every `reward_<term>` of a run that is ever non-zero."""
    keys = sorted({k for r in records for k in r if k.startswith("reward_")})
    return [k for k in keys if any(_series(records, k)[1])]


def rl_curves(runs: Mapping[str, Sequence[Mapping]], path: str | Path,
              terms_of: str | None = None) -> Path | None:
    """RL training curves in four panels, one colour per run: total reward; the reward terms of
    run `terms_of` (default: the last run), each at its value before the weights; executability
    with its 95% band and format validity; the core's cost per strategy.

    `runs` maps a run name to its metrics.jsonl records. Returns None when nothing was logged.
    """
    runs = {name: records for name, records in runs.items() if _series(records, "reward")[0]}
    if not runs:
        return None
    terms_of = terms_of if terms_of in runs else list(runs)[-1]
    path = Path(path)
    with plt.rc_context({**STYLE, "font.size": 13, "axes.titlesize": 14, "legend.fontsize": 11}):
        fig, axes = plt.subplots(2, 2, figsize=(11, 8), dpi=100)
        (ax_reward, ax_terms), (ax_exec, ax_cost) = axes
        for i, (name, records) in enumerate(runs.items()):
            color = f"C{i}"
            ax_reward.plot(*_series(records, "reward"), color=color, linewidth=2, label=name)
            xs, ys = _series(records, "executability")
            if xs:
                ax_exec.plot(xs, ys, color=color, linewidth=2, label=f"{name}: executability")
                _, lo = _series(records, "executability_lo")
                _, hi = _series(records, "executability_hi")
                if len(lo) == len(hi) == len(xs):
                    ax_exec.fill_between(xs, lo, hi, color=color, alpha=0.15)
            xs, ys = _series(records, "format_valid")
            if xs:
                ax_exec.plot(xs, ys, "--", color=color, linewidth=1.5, label=f"{name}: format valid")
            xs, ys = _series(records, "usd_per_strategy")
            if xs:
                ax_cost.plot(xs, [USD_SCALE * y for y in ys], color=color, linewidth=2, label=name)
        for j, key in enumerate(reward_keys(runs[terms_of])):
            ax_terms.plot(*_series(runs[terms_of], key), color=f"C{j}", linewidth=1.8,
                          label=key.removeprefix("reward_"))
        panels = (
            (ax_reward, "mean reward per strategy", "reward"),
            (ax_terms, f"reward terms before weights ({terms_of})", "term value"),
            (ax_exec, "executability α (95% CI), format validity", "fraction of strategies"),
            (ax_cost, f"core cost per {USD_SCALE:,} strategies", "USD"),
        )
        for ax, title, ylabel in panels:
            ax.set_title(title)
            ax.set_xlabel("RL step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.lines and ax is not ax_exec:
                ax.legend(loc="best")
        # fractions live in [0, 1]; the headroom above holds the legend clear of the curves
        ax_exec.set_ylim(-0.02, 1.45)
        ax_exec.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        if ax_exec.lines:
            ax_exec.legend(loc="upper center", ncol=2, fontsize=9.5)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def cost_vs_problems(rows: Sequence[Mapping], entries: Sequence[Mapping], path: str | Path,
                     methods: Sequence[str] = ("exectune",)) -> Path | None:
    """Cumulative USD against problems served: the baselines from zero, each guide from its
    training spend; crossings are the break-even points. None without the rows to draw."""
    by = {r["method"]: r for r in rows}
    guides = [e for e in entries if e["method"] in methods]
    if "core_only" not in by or not guides:
        return None
    repay = [v for e in guides for k, v in e.items() if k.startswith("problems_to_repay") and v]
    horizon = max(100.0, 2.0 * max(repay, default=50.0))
    xs = [horizon * i / 100 for i in range(101)]
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        for base in ("core_only", "core_strong"):
            if base in by:
                ax.plot(xs, [x * by[base]["usd_per_problem"] for x in xs], label=base, linewidth=2)
        for e in guides:
            ax.plot(xs, [e["training_usd"] + x * e["usd_per_problem"] for x in xs],
                    label=f"{e['method']} (training included)", linewidth=2)
        ax.set_xlabel("problems served")
        ax.set_ylabel("cumulative USD")
        ax.set_title("Cumulative cost: does the guide pay for itself?")
        return _save(fig, ax, path)


SWEEP_MEASURES = (("accuracy", "accuracy (%)", 100), ("executability", "executability α (%)", 100),
                  ("usd_per_problem", f"USD per {USD_SCALE:,} problems", USD_SCALE))


def sensitivity(sweeps: Mapping[str, Sequence[tuple[float, Sequence[Mapping]]]],
                path: str | Path, title: str) -> Path | None:
    """A study's sensitivity sweep: one column of panels per swept world value, one row per
    measure (accuracy, α, USD), each method's mean ± sd over seeds against the value.

    `sweeps` maps an x-axis label to (value, the study rows of the world with that value), the
    run's own world first (marked by a dotted line). None when there is nothing to plot."""
    if not sweeps:
        return None
    path = Path(path)
    with plt.rc_context({**STYLE, "legend.fontsize": 9.5}):
        fig, axes = plt.subplots(len(SWEEP_MEASURES), len(sweeps), squeeze=False,
                                 figsize=(5.5 * len(sweeps), 3.4 * len(SWEEP_MEASURES) + 0.4), dpi=100)
        for col, (xlabel, points) in enumerate(sweeps.items()):
            own = points[0][0]
            points = sorted(points, key=lambda p: p[0])
            methods = list(dict.fromkeys(r["method"] for _, rows in points for r in rows))
            for row, (key, ylabel, scale) in enumerate(SWEEP_MEASURES):
                ax = axes[row][col]
                for i, method in enumerate(methods):
                    cells = [(x, r[key]) for x, rows in points for r in rows
                             if r["method"] == method and r.get(key) is not None]
                    if cells:
                        ax.errorbar([x for x, _ in cells], [scale * c["mean"] for _, c in cells],
                                    yerr=[scale * c["sd"] for _, c in cells], color=f"C{i % 10}",
                                    marker=MARKERS[i % len(MARKERS)], capsize=4, linewidth=1.6,
                                    label=method)
                ax.axvline(own, color="0.5", linestyle=":", linewidth=1.2)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                ax.set_xticks([x for x, _ in points])
                ax.grid(alpha=0.3)
        axes[0][0].legend(loc="best", frameon=True)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def pareto(frontier: Sequence[tuple[float, Mapping]], others: Sequence[Mapping], path: str | Path,
           title: str, strong: str = "core_strong") -> Path | None:
    """Accuracy against USD per problem for a sweep of RL's cost weight λ: ExecTune at each λ
    (mean ± sd over seeds, joined in order of λ and labelled with it), each row of `others` a
    point, and the region above the strong core's (`strong`) accuracy and below its USD per
    problem shaded: "cheaper and better" than the strong core alone. Rows carry {mean, sd}
    cells, as a study's do. None when there is no λ to plot."""
    if not frontier:
        return None
    path = Path(path)

    def xy(r: Mapping) -> tuple[float, float, float, float]:
        usd, acc = r["usd_per_problem"], r["accuracy"]
        return (USD_SCALE * usd["mean"], 100 * acc["mean"], USD_SCALE * usd["sd"], 100 * acc["sd"])

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=120)
        line = [xy(r) for _, r in frontier]
        ax.errorbar([p[0] for p in line], [p[1] for p in line], xerr=[p[2] for p in line],
                    yerr=[p[3] for p in line], color="C3", marker="o", markersize=8, capsize=4,
                    linewidth=2, label="ExecTune at each λ", zorder=3)
        # one column of labels with leader lines: neighbouring λs often land on nearly one point
        for i, ((lam, _), (x, y, _, _)) in enumerate(zip(frontier, line)):
            ax.annotate(f"λ={lam:g}", (x, y), xytext=(0.3, 0.93 - 0.06 * i),
                        textcoords="axes fraction", fontsize=9, color="C3",
                        arrowprops={"arrowstyle": "-", "color": "C3", "linewidth": 0.5})
        for i, r in enumerate(others):
            x, y, dx, dy = xy(r)
            ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt=MARKERS[(i + 1) % len(MARKERS)],
                        color=f"C{(i + 4) % 10}", markersize=8, capsize=4, label=r["method"])
        ref = next((r for r in others if r["method"] == strong), None)
        if ref is not None:
            x, y, _, _ = xy(ref)
            ax.autoscale_view()
            x0, _ = ax.get_xlim()
            _, y1 = ax.get_ylim()
            ax.fill_between([min(x0, 0.0), x], y, max(y1, 100.0), color="C2", alpha=0.12,
                            label=f"cheaper and better than {strong}")
            ax.set_xlim(left=min(x0, 0.0))
            ax.set_ylim(top=max(y1, 100.0))
        ax.set_xlabel(f"USD per {USD_SCALE:,} problems")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        return _save(fig, ax, path)
