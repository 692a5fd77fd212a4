"""Figures for the README and the eval directory: cost vs accuracy, and RL training curves.

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


def accuracy_vs_cost(rows: Sequence[Mapping], path: str | Path) -> Path:
    """One point per method: x = core USD per 1,000 problems, y = accuracy with its 95% CI."""
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        for i, r in enumerate(rows):
            x = r["usd_per_problem"] * USD_SCALE
            y = 100 * r["accuracy"]
            lo, hi = (100 * v for v in r["accuracy_ci"])
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt=MARKERS[i % len(MARKERS)],
                        markersize=9, capsize=5, elinewidth=1.5, label=r["method"])
        ax.set_xlabel(f"core cost (USD per {USD_SCALE:,} problems)")
        ax.set_ylabel("accuracy (%, 95% Wilson CI)")
        ax.set_title("Accuracy vs core API cost")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", frameon=True)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def curve_panels(records: Sequence[Mapping]) -> dict[str, list[str]]:
    """Which logged scalars go in which panel: reward terms, executability, cost."""
    keys = sorted({k for r in records for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    panels = {
        "reward terms": [k for k in keys if k.startswith("reward")],
        "executability / format": [k for k in keys
                                   if k.startswith(("executab", "format", "leak", "accuracy"))],
        "core cost (USD per step)": [k for k in keys if "usd" in k],
    }
    return {title: ks for title, ks in panels.items() if ks}


def rl_curves(runs: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path | None:
    """Training curves of one or more RL runs (name -> metrics.jsonl records), one row of panels.

    Returns None when no run logged anything plottable.
    """
    panels: dict[str, list[str]] = {}
    for records in runs.values():
        for title, ks in curve_panels(records).items():
            panels.setdefault(title, [])
            panels[title] += [k for k in ks if k not in panels[title]]
    if not panels:
        return None
    path = Path(path)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), dpi=110,
                                 squeeze=False)
        handles = {}
        for ax, (title, ks) in zip(axes[0], panels.items()):
            for run_i, (name, records) in enumerate(runs.items()):
                for k in ks:
                    pts = [(r["step"], r[k]) for r in records if r.get(k) is not None]
                    if not pts:
                        continue
                    xs, ys = zip(*pts)
                    label = f"{name}: {k}" if len(runs) > 1 else k
                    (line,) = ax.plot(xs, ys, linestyle=("-", "--", ":")[run_i % 3],
                                      linewidth=1.8, label=label)
                    handles.setdefault(label, line)
            ax.set_title(title)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("value")
        fig.legend(handles.values(), handles.keys(), loc="lower center",
                   ncol=min(4, len(handles)), frameon=False)
        rows = -(-len(handles) // 4)
        fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
        fig.savefig(path)
        plt.close(fig)
    return path
