"""The Markdown report: per device, the figures, the ratios, the batch sizes and the goals."""

from __future__ import annotations

from collections.abc import Iterable

from bench.compare import raw_name
from bench.figures import BenchResult, DeviceResult, Latency, Level, Ratio, RawResult, SystemResult

DASH = "–"
BUSY_LOAD_PER_CORE = 0.5


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(DASH if cell is None else str(cell) for cell in cells) + " |"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def _latency(latency: Latency | None) -> list[object]:
    return [latency.p50, latency.p90, latency.p99, latency.max] if latency else [None] * 4


def _raw_row(raw: RawResult) -> list[object]:
    return [
        "raw engine (no HTTP)",
        f"batch {raw.batch}",
        raw.images,
        raw.images_per_s,
        *_latency(raw.batch_latency_ms),
        None,
        None,
        None,
        None,
    ]


def _level_row(system: SystemResult, level: Level) -> list[object]:
    load = level.load
    abandoned = f", {load.abandoned} abandoned" if load.abandoned else ""
    planned = load.clients * load.requests_per_client
    requests = f"{load.completed}" if load.complete else f"{load.completed} of {planned} (time limit{abandoned})"
    mean_batch = level.batch_sizes.mean if level.batch_sizes else None
    return [
        system.label,
        load.clients,
        requests,
        load.images_per_s,
        *_latency(load.latency_ms),
        load.errors,
        load.rejected,
        mean_batch,
        system.peak_rss_mb,
    ]


def figures_table(device: DeviceResult) -> list[str]:
    header = [
        "system",
        "clients",
        "requests",
        "images/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "rejected",
        "mean batch",
        "peak RSS MB",
    ]
    rows = [_raw_row(raw) for raw in device.raw_engine]
    for system in device.systems:
        rows += [_level_row(system, level) for level in system.levels]
        if system.error:
            rows.append([system.label, None, f"not measured: {system.error[:200]}", *[None] * 9])
    return _table(header, rows)


def _ratio_cell(ratio: Ratio | None) -> str | None:
    if ratio is None or ratio.throughput is None:
        return None
    return f"{ratio.throughput:.2f}x" + (f" (p99 {ratio.p99:.2f}x)" if ratio.p99 is not None else "")


def _ratio_columns(device: DeviceResult) -> list[tuple[str, str, str]]:
    """(numerator, denominator, header) of each column."""
    batch = device.service_max_batch
    return [
        ("service_batching", "service_unbatched", "batching on / off"),
        ("service_batching", "naive", "batching on / naive"),
        ("service_unbatched", "naive", "batching off / naive"),
        ("service_batching", raw_name(batch), f"batching on / raw engine at batch {batch}"),
        ("service_unbatched", raw_name(1), "batching off / raw engine at batch 1"),
    ]


def ratios_table(device: DeviceResult) -> list[str]:
    columns = _ratio_columns(device)
    ratios = {(r.clients, r.numerator, r.denominator): r for r in device.ratios}
    rows: list[list[object]] = [
        [c, *(_ratio_cell(ratios.get((c, n, d))) for n, d, _ in columns)] for c in sorted({r.clients for r in device.ratios})
    ]
    return _table(["clients", *(h for _, _, h in columns)], rows)


def batch_table(device: DeviceResult) -> list[str]:
    system = device.system("service_batching")
    rows: list[list[object]] = [
        [level.load.clients, b.batches, b.mean, ", ".join(f"{size}: {count}" for size, count in b.counts.items())]
        for level in (system.levels if system else [])
        if (b := level.batch_sizes) is not None
    ]
    return _table(["clients", "graph runs", "mean batch", "batches by size"], rows)


def goals_table(device: DeviceResult) -> list[str]:
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    return _table(["goal", "measured", "met"], [[g.goal, g.measured, verdict[g.met]] for g in device.goals])


def _threads(count: object) -> str:
    return "the library's default threads" if count in (0, None) else f"{count} threads"


def system_lines(device: DeviceResult) -> list[str]:
    """What each system ran on, as the servers themselves reported it."""
    engine = device.engine
    lines = [f"- raw engine: {engine.get('engine')}, {engine.get('provider')}, {_threads(engine.get('intra_op_threads'))}"]
    for system in device.systems:
        runtime = system.runtime.get("runtime", system.runtime)  # the service nests it; the naive server does not
        if "max_batch_size" in runtime:
            batching = (
                f"max batch {runtime['max_batch_size']}, wait {runtime.get('max_batch_wait_ms')} ms, queue {runtime.get('max_queue')}"
            )
            lines.append(f"- {system.label}: {runtime.get('provider')}, {_threads(runtime.get('intra_op_threads'))}, {batching}")
        else:
            lines.append(
                f"- {system.label}: {runtime.get('engine')} (torch {runtime.get('torch')}) on {runtime.get('device')}, {runtime.get('threads')} threads"
            )
    return lines


def device_section(device: DeviceResult, plots: list[str]) -> list[str]:
    lines = [f"## {device.device.upper()}", "", *system_lines(device), ""]
    lines += [
        "Throughput is images/s answered 200; latency percentiles are of those requests (for the raw engine, of one graph run).",
        "Errors count every other answer and transport errors; rejected counts 429 and 503 (queue full).",
        "A level that hits its time limit sends nothing new; requests still unanswered at its deadline are abandoned.",
        "",
    ]
    lines += [*figures_table(device), "", "Ratios of throughput (and of p99 latency: below 1 is better), pair by pair:", ""]
    lines += [*ratios_table(device), "", "Batch sizes (service, batching on), from `/metrics`:", ""]
    lines += [*batch_table(device), "", "Goals:", "", *goals_table(device), ""]
    return lines + [f"![{name}]({name})" for name in plots] + [""]


def header(result: BenchResult) -> list[str]:
    m, model, images = result.machine, result.model, result.config.get("images", {})
    lines = ["# Benchmark: the service vs the raw engine vs a naive eager server", ""]
    if result.quick:
        lines += ["**A --quick run: a check that everything works, too short for figures to publish.**", ""]
    load, cores = (m.get("load_average") or [0.0])[0], m.get("cores") or 1
    if load >= BUSY_LOAD_PER_CORE * cores:
        lines += [
            f"**The machine was not idle when the run began (load average {load} on {cores} cores): other work skews these figures.**",
            "",
        ]
    lines += [
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB; GPU: {m.get('gpu') or 'none'}; {m.get('platform')}",
        f"- Software: Python {m.get('python')}, ONNX Runtime {m.get('onnxruntime')} ({', '.join(m.get('providers', []))}), NumPy {m.get('numpy')}, "
        + ", ".join(f"{name} {version}" for name, version in m.get("versions", {}).items()),
        f"- Model: {model.get('name')} v{model.get('version')} ({model.get('arch')}), canvas {model.get('canvas')}, max batch {model.get('max_batch')}",
        f"- Images: {images.get('count')} JPEGs, {images.get('megapixels_min_mean_max')} megapixels (min, mean, max), {images.get('without_objects')} without objects",
        f"- Run: {result.started}, {result.seconds} s; `python -m bench{' --quick' if result.quick else ''}`",
        "",
    ]
    return lines


def markdown(result: BenchResult, plots: dict[str, list[str]]) -> str:
    lines = header(result)
    for device in result.devices:
        lines += device_section(device, plots.get(device.device, []))
    return "\n".join(lines)
