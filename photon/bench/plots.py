"""Plots of benchmark results: the protocol's rows, the context sweep and the quality/speed
trade-off."""

from __future__ import annotations

import math

from photon.bench.protocol import Row, SweepPoint, label


def _pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed), imported when a plot
    is drawn: the benchmark itself runs without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rows(rows: list[Row], path: str) -> None:
    """Per workload: each row's TPM relative to vanilla, and its memory per sample against
    its cache bytes (how much of the memory is cache)."""
    plt = _pyplot()

    workloads = sorted({r.workload for r in rows})
    fig, axes = plt.subplots(2, len(workloads), figsize=(6 * len(workloads), 7), squeeze=False)
    for col, workload in enumerate(workloads):
        mine = [r for r in rows if r.workload == workload]
        names = [label(r.model, r.mode) for r in mine]
        top, bottom = axes[0][col], axes[1][col]
        bars = top.bar(names, [r.tpm for r in mine])
        top.bar_label(bars, fontsize=8, labels=[
            "" if r.vs_vanilla is None else f"{r.vs_vanilla:,.0f}x" for r in mine])
        top.set_yscale("log")
        top.set_title(f"{workload}: TPM (K tokens/s/GiB), labelled relative to vanilla")
        bottom.bar(names, [r.mem_per_sample_gib * 1024 for r in mine], label="memory per sample")
        bottom.bar(names, [r.cache_bytes_per_sample / 2**20 for r in mine], width=0.5,
                   label="its KV caches")
        bottom.set_yscale("log")
        bottom.set_title(f"{workload}: MiB per sequence")
        bottom.legend(fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(points: list[SweepPoint], path: str) -> None:
    """Per-sample memory, decode time per token and TPM against context, one line a model."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = sorted({(p.model, p.mode) for p in points}, key=lambda s: label(*s))
    for name, mode in series:
        pts = sorted((p for p in points if (p.model, p.mode) == (name, mode)),
                     key=lambda p: p.context)
        x = [p.context for p in pts]
        for ax, y in zip(axes, ([p.mem_per_sample_gib * 1024 for p in pts],
                                [p.ms_per_token for p in pts], [p.tpm for p in pts]),
                         strict=True):
            ax.plot(x, y, marker="o", label=label(name, mode))
    for ax, title in zip(axes, ("memory per sample (MiB)", "decode time per token (ms)",
                                "TPM (K tok/s/GiB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (prompt tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (tpm, bpb) not dominated by another with higher TPM and lower bpb."""
    front, best = [], math.inf
    for tpm, bpb in sorted(points, key=lambda p: (-p[0], p[1])):
        if bpb < best:
            front.append((tpm, bpb))
            best = bpb
    return front


def plot_tradeoff(entries: list[dict], path: str, workload: str) -> None:
    """TPM against validation bpb (lower is better), with the Pareto frontier."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"vanilla": "s", "block": "^", "photon": "o"}
    for e in entries:
        ax.scatter(e["tpm"], e["bpb"], s=60, marker=markers.get(e.get("kind"), "o"),
                   label=e["label"], zorder=3)
    front = pareto_front([(e["tpm"], e["bpb"]) for e in entries])
    # Rings mark the frontier's points; the dashed steps join them (one point is a ring).
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=220, facecolors="none",
               edgecolors="k", zorder=2, label="Pareto frontier")
    ax.step([p[0] for p in front], [p[1] for p in front], "k--", lw=1, where="post")
    ax.set_xscale("log")
    ax.set_xlabel(f"TPM, {workload} (K tokens/s/GiB, higher is better)")
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
