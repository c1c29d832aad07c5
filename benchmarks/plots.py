"""PNG plots of a suite file: latency vs offered load (open loop) and latency vs catalog size.

Each function returns the written path, or None when the suite holds no such measurements (a "ci" run).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from benchmarks.report import GATEWAY, NAIVE, RPCS, scenario_name

SIDES = {GATEWAY: ("ours (gateway)", "tab:blue"), NAIVE: ("naive baseline", "tab:orange")}


def plot_open_loop(suite: dict, path: Path) -> Path | None:
    """p50 and p99 against the offered rate, per RPC, ours and naive (log latency axis)."""
    scenarios = suite["scenarios"]
    open_loop = [s for s in scenarios.values() if s.get("mode") == "open"]
    if not open_loop:
        return None
    figure, axes = plt.subplots(1, len(RPCS), figsize=(6 * len(RPCS), 4.5), squeeze=False)
    for axis, rpc in zip(axes[0], RPCS, strict=True):
        for side, (label, color) in SIDES.items():
            points = sorted(
                (s["rate"], s["p50_ms"], s["p99_ms"]) for s in open_loop if s["rpc"] == rpc and s["side"] == side
            )
            if not points:
                continue
            rates, p50, p99 = zip(*points, strict=True)
            axis.plot(rates, p50, "o-", color=color, label=f"{label} p50")
            axis.plot(rates, p99, "s--", color=color, label=f"{label} p99")
        bound = suite["max_rate"][rpc]["p99_bound_ms"]
        axis.axhline(bound, color="grey", linewidth=0.8, linestyle=":", label=f"p99 bound {bound:g} ms")
        axis.set(title=f"{rpc}: latency vs offered load", xlabel="offered requests/s (open loop)", ylabel="ms")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path)


def plot_scale(suite: dict, path: Path) -> Path | None:
    """p50 at concurrency 1 and p99 at concurrency 8 against the number of items, per RPC (log-log)."""
    scale = suite.get("scale", {})
    if not scale:
        return None
    scenarios = suite["scenarios"]
    figure, axes = plt.subplots(1, len(RPCS), figsize=(6 * len(RPCS), 4.5), squeeze=False)
    for axis, rpc in zip(axes[0], RPCS, strict=True):
        for side, (label, color) in SIDES.items():
            for load, field, style in (("c1", "p50_ms", "o-"), ("c8", "p99_ms", "s--")):
                points = [
                    (info["items"], scenarios[name][field])
                    for catalog, info in scale.items()
                    if (name := scenario_name(rpc, load, side, catalog)) in scenarios and scenarios[name]["ok"]
                ]
                if points:
                    items, values = zip(*sorted(points), strict=True)
                    axis.plot(items, values, style, color=color, label=f"{label} {field[:3]} @{load}")
        axis.set(title=f"{rpc}: latency vs catalog size", xlabel="items", ylabel="ms")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return save(figure, path)


def save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
