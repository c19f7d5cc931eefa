"""Every PNG tdrm writes: Best-of-N, search, RL and value-trajectory plots (matplotlib,
Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], name: str) -> tuple[list[int], list[float], list[float]]:
    points = sorted((r["n"], r["accuracy"], r["std"]) for r in rows if r["name"] == name)
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def bon_accuracy(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy vs N: one panel per aggregation, a line per PRM x vote, pass@N and majority as references."""
    plt = _pyplot()
    aggs = list(dict.fromkeys(r["agg"] for r in rows if r["agg"] is not None)) or [None]
    fig, axes = plt.subplots(
        1, len(aggs), figsize=(5.5 * len(aggs), 4.2), squeeze=False, sharey=True
    )
    for ax, agg in zip(axes[0], aggs, strict=True):
        for name, style in (
            ("pass@N", dict(color="black", linestyle="--")),
            ("majority", dict(color="gray", linestyle=":")),
        ):
            ns, acc, _ = _series(rows, name)
            if ns:
                ax.plot(ns, acc, marker=".", label=name, **style)
        names = list(dict.fromkeys(r["name"] for r in rows if r["agg"] == agg and agg is not None))
        for name in names:
            ns, acc, std = _series(rows, name)
            ax.plot(
                ns, acc, marker="o", label=name.rsplit("/", 2)[0] + " " + name.rsplit("/", 1)[-1]
            )
            ax.fill_between(
                ns,
                [a - s for a, s in zip(acc, std, strict=True)],
                [a + s for a, s in zip(acc, std, strict=True)],
                alpha=0.15,
            )
        ax.set_xscale("log", base=2)
        ticks = sorted({r["n"] for r in rows})
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_xlabel("N (candidates per problem)")
        ax.set_title(f"aggregation: {agg}" if agg else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def search_accuracy_vs_tokens(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy vs generated tokens per problem: one point per method x PRM, methods by marker."""
    plt = _pyplot()
    from matplotlib.ticker import LogFormatter

    fig, ax = plt.subplots(figsize=(6, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = {method: "os^Dv<>P*X"[i % 10] for i, method in enumerate(methods)}
    prms = list(dict.fromkeys(r["prm"] for r in rows))
    colors = {prm: f"C{i}" for i, prm in enumerate(prms)}
    for prm in prms:  # a thin line per PRM through its methods, cheapest first
        points = sorted((r["tokens_per_problem"], r["accuracy"]) for r in rows if r["prm"] == prm)
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=colors[prm],
            alpha=0.4,
            linewidth=1,
        )
    for r in rows:
        ax.scatter(
            r["tokens_per_problem"],
            r["accuracy"],
            marker=markers[r["method"]],
            color=colors[r["prm"]],
            s=60,
            label=f"{r['method']} / {r['prm']}",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rl_accuracy_vs_problems(
    curves: dict[str, list[dict[str, Any]]], path: Path, title: str
) -> Path:
    """Held-out greedy pass@1 against training problems seen, one line per run (label -> points)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        points = sorted(points, key=lambda p: p["problems_seen"])
        xs, ys = [p["problems_seen"] for p in points], [p["accuracy"] for p in points]
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set(
        xlabel="training problems seen",
        ylabel="held-out greedy pass@1",
        ylim=(-0.02, 1.02),
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def value_trajectories(trajectories: dict, path: Path, limit: int = 25) -> Path:
    """V(s_t) along correct and wrong solutions, one panel per PRM, with per-step means."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(trajectories), figsize=(5.5 * len(trajectories), 4), squeeze=False, sharey=True
    )
    for ax, (name, (values, correct)) in zip(axes[0], trajectories.items(), strict=True):
        for label, color, want in (("correct", "tab:green", 1), ("wrong", "tab:red", 0)):
            group = [v for v, c in zip(values, correct, strict=True) if c == want]
            for v in group[:limit]:
                ax.plot(range(1, len(v) + 1), v, color=color, alpha=0.15, linewidth=0.8)
            depth = max((len(v) for v in group), default=0)
            means = [
                sum(v[t] for v in group if len(v) > t) / max(sum(len(v) > t for v in group), 1)
                for t in range(depth)
            ]
            if means:
                ax.plot(
                    range(1, depth + 1),
                    means,
                    color=color,
                    linewidth=2.5,
                    label=f"{label} solutions (mean)",
                )
        ax.set(title=f"PRM {name}", xlabel="step t", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("V(s_t)")
    fig.suptitle("value trajectories along sampled solutions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
