"""Markdown table cells and tables, shared by the report's sections."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bench.figures import Goal, Latency, Level
from service.engines.base import EngineInfo

DASH = "–"  # a figure not measured


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(DASH if cell is None else str(cell) for cell in cells) + " |"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def latency_cells(latency: Latency | None) -> list[object]:
    return [latency.p50, latency.p90, latency.p99, latency.max] if latency else [None] * 4


def p50_p99_cells(latency: Latency | None) -> list[object]:
    return [latency.p50, latency.p99] if latency else [None, None]


def level_cells(label: str, level: Level, latency: Callable[[Latency | None], list[object]]) -> list[object]:
    """One load level of a system: clients, requests (and what a time limit left undone), images/s, the latency cells,
    errors, rejections and the mean batch."""
    load = level.load
    abandoned = f", {load.abandoned} abandoned" if load.abandoned else ""
    planned = load.clients * load.requests_per_client
    requests = f"{load.completed}" if load.complete else f"{load.completed} of {planned} (time limit{abandoned})"
    mean_batch = level.batch_sizes.mean if level.batch_sizes else None
    return [label, load.clients, requests, load.images_per_s, *latency(load.latency_ms), load.errors, load.rejected, mean_batch]


def goals_table(goals: list[Goal]) -> list[str]:
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    return table(["goal", "measured", "met"], [[g.goal, g.measured, verdict[g.met]] for g in goals])


def _threads(count: object) -> str:
    return "the library's default threads" if count in (0, None) else f"{count} threads"


def engine_text(engine: EngineInfo) -> str:
    """``onnxruntime 1.31.1, CPUExecutionProvider (cpu, fp32), 2 threads``."""
    threads = f", {_threads(engine.details['intra_op_threads'])}" if "intra_op_threads" in engine.details else ""
    return f"{engine.engine} {engine.version}, {engine.provider} ({engine.device}, {engine.precision}){threads}"
