"""PNG plots of search results (matplotlib, Agg backend: no display needed)."""

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
    markers = {"beam": "o", "greedy": "s", "dvts": "^"}
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
            marker=markers.get(r["method"], "x"),
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
