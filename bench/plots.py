"""PNG plots, per device: of the systems section, throughput vs clients and p99 latency vs clients, one line per
system; of the precisions section, the service's throughput vs clients and the graph's time per image vs batch size,
one line per configuration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.figures import LoadResult, PrecisionsSection, SystemsSection

STYLE = {"service_batching": "o-", "service_unbatched": "s-", "naive": "^-"}


def _series(device: SystemsSection, name: str, figure: str) -> tuple[list[int], list[float]]:
    system = device.system(name)
    loads: list[LoadResult] = [level.load for level in system.levels] if system else []
    if figure == "throughput":
        return [load.clients for load in loads], [load.images_per_s for load in loads]
    points = [(load.clients, load.latency_ms.p99) for load in loads if load.latency_ms]
    return [c for c, _ in points], [p for _, p in points]


def _draw_raw_engine(axes: Axes, device: SystemsSection) -> None:
    """The ceilings the services are held against: the raw engine at batch 1 and at the service's max batch."""
    for raw, style in ((device.raw(1), ":"), (device.raw(device.service_max_batch), "--")):
        if raw is not None:
            axes.axhline(raw.images_per_s, linestyle=style, linewidth=1, color="grey", label=f"raw engine, batch {raw.batch} (no HTTP)")


def _mark_incomplete(axes: Axes, device: SystemsSection, figure: str) -> None:
    """Levels cut short by their time limit carry a note: fewer requests than planned."""
    for system in device.systems:
        for level in system.levels:
            load = level.load
            value = load.images_per_s if figure == "throughput" else (load.latency_ms.p99 if load.latency_ms else None)
            if not load.complete and value is not None:
                axes.annotate("time limit", (load.clients, value), textcoords="offset points", xytext=(4, 4), fontsize=7, color="red")


def _draw(axes: Axes, device: SystemsSection, figure: str) -> None:
    clients: set[int] = set()
    for system in device.systems:
        xs, values = _series(device, system.name, figure)
        clients |= set(xs)
        if xs:
            axes.plot(xs, values, STYLE.get(system.name, "o-"), label=system.label)
    _mark_incomplete(axes, device, figure)
    if figure == "throughput":
        _draw_raw_engine(axes, device)
        axes.set_ylim(bottom=0)
    else:
        axes.set_yscale("log")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(clients), [str(c) for c in sorted(clients)])
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("images/s" if figure == "throughput" else "p99 latency (ms)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)


def plot_device(name: str, device: SystemsSection, out: Path, prefix: str = "bench") -> list[Path]:
    """Writes <prefix>-<name>-throughput.png and <prefix>-<name>-p99.png into ``out``; returns their paths."""
    titles = {"throughput": "Throughput vs concurrent clients", "p99": "p99 latency vs concurrent clients"}
    written = []
    for figure, title in titles.items():
        fig, axes = plt.subplots(figsize=(7, 4.5))
        _draw(axes, device, figure)
        axes.set_title(f"{title} ({name.upper()}{', quick run' if device.run.quick else ''})")
        path = out / f"{prefix}-{name}-{figure}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_precisions(name: str, section: PrecisionsSection, out: Path, prefix: str = "bench") -> Path:
    """Writes <prefix>-<name>-precisions.png into ``out``: the service's images/s by clients, the graph's ms/image by batch."""
    fig, (served, graph) = plt.subplots(1, 2, figsize=(11, 4.5))
    ticks: dict[Axes, set[int]] = {served: set(), graph: set()}
    for row in section.rows:
        loads = [level.load for level in row.service.levels] if row.service else []
        for axes, xs, ys in (
            (served, [load.clients for load in loads], [load.images_per_s for load in loads]),
            (graph, [raw.batch for raw in row.raw], [raw.batch_latency_ms.p50 / raw.batch for raw in row.raw]),
        ):
            if xs:
                axes.plot(xs, ys, "o-", label=row.label)
                ticks[axes] |= set(xs)
    for axes, xlabel, ylabel in ((served, "concurrent clients", "service images/s"), (graph, "batch size", "graph ms per image (median)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted(ticks[axes]), [str(x) for x in sorted(ticks[axes])])
        axes.set_ylim(bottom=0)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle(f"Engines and precisions ({name.upper()}{', quick run' if section.run.quick else ''})")
    path = out / f"{prefix}-{name}-precisions.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
