"""The Markdown report: the runs that measured it, then per device each section's figures and goals."""

from __future__ import annotations

from bench.compare import raw_name
from bench.figures import (
    BenchResult,
    DeviceResult,
    ExportSpeedSection,
    Level,
    PrecisionsSection,
    ProtocolsSection,
    Ratio,
    RawResult,
    Run,
    ServiceThroughputSection,
    SystemResult,
    SystemsSection,
    TrainStepSection,
)
from bench.precisions_report import precisions_section
from bench.tables import engine_text, goals_table, latency_cells, level_cells, p50_p99_cells, table
from service.engines.base import EngineInfo

BUSY_LOAD_PER_CORE = 0.5
BUSY_SHARE = 0.1  # of the cores' time taken by other processes during a run


def _raw_row(raw: RawResult) -> list[object]:
    return [
        "raw engine (no HTTP)",
        f"batch {raw.batch}",
        raw.images,
        raw.images_per_s,
        *latency_cells(raw.batch_latency_ms),
        None,
        None,
        None,
        None,
    ]


def _level_row(system: SystemResult, level: Level) -> list[object]:
    return [*level_cells(system.label, level, latency_cells), system.peak_rss_mb]


def figures_table(device: SystemsSection) -> list[str]:
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
    return table(header, rows)


def _ratio_cell(ratio: Ratio | None) -> str | None:
    if ratio is None or ratio.throughput is None:
        return None
    return f"{ratio.throughput:.2f}x" + (f" (p99 {ratio.p99:.2f}x)" if ratio.p99 is not None else "")


def _ratio_columns(device: SystemsSection) -> list[tuple[str, str, str]]:
    """(numerator, denominator, header) of each column."""
    batch = device.service_max_batch
    return [
        ("service_batching", "service_unbatched", "batching on / off"),
        ("service_batching", "naive", "batching on / naive"),
        ("service_unbatched", "naive", "batching off / naive"),
        ("service_batching", raw_name(batch), f"batching on / raw engine at batch {batch}"),
        ("service_unbatched", raw_name(1), "batching off / raw engine at batch 1"),
    ]


def ratios_table(device: SystemsSection) -> list[str]:
    columns = _ratio_columns(device)
    ratios = {(r.clients, r.numerator, r.denominator): r for r in device.ratios}
    rows: list[list[object]] = [
        [c, *(_ratio_cell(ratios.get((c, n, d))) for n, d, _ in columns)] for c in sorted({r.clients for r in device.ratios})
    ]
    return table(["clients", *(h for _, _, h in columns)], rows)


def batch_table(device: SystemsSection) -> list[str]:
    system = device.system("service_batching")
    rows: list[list[object]] = [
        [level.load.clients, b.batches, b.mean, ", ".join(f"{size}: {count}" for size, count in b.counts.items())]
        for level in (system.levels if system else [])
        if (b := level.batch_sizes) is not None
    ]
    return table(["clients", "graph runs", "mean batch", "batches by size"], rows)


def system_lines(device: SystemsSection) -> list[str]:
    """What each system ran on, as the servers themselves reported it."""
    lines = [f"- raw engine: {engine_text(device.engine)}"]
    for system in device.systems:
        runtime = system.runtime.get("runtime", system.runtime)  # the service nests it; the naive server does not
        if "max_batch_size" in runtime:
            batching = (
                f"max batch {runtime['max_batch_size']}, wait {runtime.get('max_batch_wait_ms')} ms, queue {runtime.get('max_queue')}"
            )
            lines.append(f"- {system.label}: {engine_text(EngineInfo.model_validate(runtime))}, {batching}")
        elif runtime:
            lines.append(
                f"- {system.label}: {runtime.get('engine')} (torch {runtime.get('torch')}) on {runtime.get('device')}, {runtime.get('threads')} threads"
            )
    return lines


def systems_section(section: SystemsSection, plots: list[str]) -> list[str]:
    lines = [*system_lines(section), ""]
    lines += [
        "Throughput is images/s answered 200; latency percentiles are of those requests (for the raw engine, of one graph run).",
        "Errors count every other answer and transport errors; rejected counts 429 and 503 (queue full).",
        "Each request goes on a new connection. A level that hits its time limit sends nothing new; requests still",
        "unanswered at its deadline are abandoned.",
        "",
    ]
    lines += [*figures_table(section), "", "Ratios of throughput (and of p99 latency: below 1 is better), pair by pair:", ""]
    lines += [*ratios_table(section), "", "Batch sizes (service, batching on), from `/metrics`:", ""]
    lines += [*batch_table(section), "", "Goals:", "", *goals_table(section.goals), ""]
    return lines + [f"![{name}]({name})" for name in plots] + [""]


def throughput_section(section: ServiceThroughputSection) -> list[str]:
    policy = section.policy
    lines = [
        f"The service over HTTP at {section.clients} clients against the same engine behind the same batcher in the benchmark's "
        f"process (no HTTP, canvases ready), {section.requests_per_client} requests per client, in alternating rounds; "
        f"medians over the rounds. Both: {engine_text(section.engine)}; max batch {policy['max_batch_size']}, "
        f"wait {policy['max_batch_wait_ms']} ms, queue {policy['max_queue']}.",
        "",
    ]
    if section.error:
        lines += [f"Not measured: {section.error[:300]}", ""]
    header = ["round", "raw engine behind the batcher, images/s", "service over HTTP, images/s", "p50 ms", "p99 ms", "errors", "rejected"]
    rows: list[list[object]] = [
        [index, r.raw_images_per_s, load.images_per_s, *(p50_p99_cells(load.latency_ms)), load.errors, load.rejected]
        for index, r in enumerate(section.rounds, 1)
        for load in [r.service]
    ]
    rows.append(["median", section.raw_images_per_s, section.service_images_per_s, None, None, None, None])
    lines += [*table(header, rows), ""]
    if section.batch_sizes is not None:
        sizes = section.batch_sizes
        counts = ", ".join(f"{size}: {count}" for size, count in sizes.counts.items())
        lines += [f"The service's graph runs over the rounds (`/metrics`): {sizes.batches}, mean batch {sizes.mean} ({counts}).", ""]
    return [*lines, "Goals:", "", *goals_table(section.goals), ""]


def export_section(section: ExportSpeedSection) -> list[str]:
    eager = section.eager
    lines = [
        f"Time per image of the exported graph ({engine_text(section.engine)}) and of the eager model it came from "
        f"({eager.get('engine')}, torch {eager.get('torch')} on {eager.get('device')}, {eager.get('threads')} threads), "
        f"alternating on the same canvases in one process; medians of {section.rounds} rounds.",
        "",
    ]
    rows: list[list[object]] = [[r.batch, r.eager_ms_per_image, r.graph_ms_per_image, r.ratio] for r in section.rows]
    lines += [*table(["batch", "eager ms/image", "exported graph ms/image", "graph / eager"], rows), ""]
    return [*lines, "Goals:", "", *goals_table(section.goals), ""]


def protocols_section(section: ProtocolsSection) -> list[str]:
    engine = engine_text(section.engine) if section.engine else "not known"
    lines = [
        f"One server ({engine}) at {section.clients} clients over HTTP (`POST /detect`, a connection per request) and over "
        f"gRPC (v2 `ModelInfer` from tritonclient's asyncio client, one channel), one image a request, "
        f"{section.requests_per_client} requests per client, the two taking turns round by round; medians over the rounds.",
        "",
    ]
    if section.error:
        lines += [f"Not measured: {section.error[:300]}", ""]
    header = ["round", "protocol", "images/s", "p50 ms", "p99 ms", "answers by status"]
    rows: list[list[object]] = [
        [index, name, load.images_per_s, *p50_p99_cells(load.latency_ms), ", ".join(f"{k}: {v}" for k, v in load.status.items())]
        for index, r in enumerate(section.rounds, 1)
        for name, load in (("HTTP", r.http), ("gRPC", r.grpc))
    ]
    rows.append(["median", "HTTP", section.http_images_per_s, None, section.http_p99_ms, None])
    rows.append(["median", "gRPC", section.grpc_images_per_s, None, section.grpc_p99_ms, None])
    return [*lines, *table(header, rows), ""]


def train_step_section(section: TrainStepSection) -> list[str]:
    torch = section.torch
    lines = [
        f"A training iteration of `{section.arch}` on a {section.canvas[0]}x{section.canvas[1]} canvas, {section.batch_size} "
        f"synthetic scenes a batch (torch {torch.get('torch')} on {torch.get('device')}, {torch.get('threads')} threads), with "
        "torchvision's RoIAlign and with the embedding-bag RoIAlign `model_export train` uses, from the same weights on the "
        f"same batch, alternating step by step; medians of {section.rounds} rounds.",
        "",
    ]
    rows: list[list[object]] = [[r.box_batch, r.torchvision_s, r.bags_s, r.ratio] for r in section.rows]
    lines += [*table(["box batch (RoIs per image)", "torchvision s/iteration", "bags s/iteration", "bags / torchvision"], rows), ""]
    return [*lines, "Goals:", "", *goals_table(section.goals), ""]


TITLES = {
    "systems": "Systems",
    "service-throughput": "Service throughput",
    "export-speed": "Export speed",
    "precisions": "Precisions",
    "protocols": "Protocols",
    "train-step": "Training step",
}


def device_section(device: DeviceResult, plots: dict[str, list[str]], run_numbers: dict[str, int]) -> list[str]:
    """``plots``: the plots' file names, by section option."""
    lines = [f"## {device.device.upper()}", ""]
    for option, section in device.sections().items():
        run = f", run {run_numbers[section.run.started]}" if len(run_numbers) > 1 else ""
        lines += [f"### {TITLES[option]} (`--only {option}`{run})", ""]
        if isinstance(section, SystemsSection):
            lines += systems_section(section, plots.get(option, []))
        elif isinstance(section, ServiceThroughputSection):
            lines += throughput_section(section)
        elif isinstance(section, PrecisionsSection):
            lines += precisions_section(section, plots.get(option, []))
        elif isinstance(section, ProtocolsSection):
            lines += protocols_section(section)
        elif isinstance(section, TrainStepSection):
            lines += train_step_section(section)
        else:
            lines += export_section(section)
    return lines


def _alone_lines(run: Run) -> list[str]:
    """Whether the run had the cores to itself: measured while it ran, or (an older report) the load when it began."""
    if run.others_cpu_share is not None:
        shared = f"other processes took {run.others_cpu_share:.0%} of the cores' time while it measured"
        return [f"  - **Not alone: {shared}; these figures are low.**" if run.others_cpu_share >= BUSY_SHARE else f"  - Alone: {shared}."]
    load, cores = (run.machine.get("load_average") or [0.0])[0], run.machine.get("cores") or 1
    if load >= BUSY_LOAD_PER_CORE * cores:
        return [
            f"  - **The machine was not idle when the run began (load average {load} on {cores} cores): other work skews these figures.**"
        ]
    return []


def _setting_lines(run: Run) -> list[str]:
    m, images = run.machine, run.config.get("images", {})
    return [
        f"  - Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB; GPU: {m.get('gpu') or 'none'}; {m.get('platform')}",
        f"  - Software: Python {m.get('python')}, ONNX Runtime {m.get('onnxruntime')} ({', '.join(m.get('providers', []))}), NumPy {m.get('numpy')}, "
        + ", ".join(f"{name} {version}" for name, version in m.get("versions", {}).items()),
        f"  - Images: {images.get('count')} JPEGs, {images.get('megapixels_min_mean_max')} megapixels (min, mean, max), {images.get('without_objects')} without objects",
    ]


def run_lines(result: BenchResult, run: Run, name: str, setting_as: str | None) -> list[str]:
    """When and how a run was made, which sections it measured, whether it was alone, and on what machine (or: the same
    machine, software and images as run ``setting_as``)."""
    measured = [f"{d.device} {option}" for d in result.devices for option, s in d.sections().items() if s.run.started == run.started]
    lines = [f"- {name}: {run.started}, {run.seconds} s, `{run.command}`; measured {', '.join(measured)}"]
    if run.quick:
        lines += ["  - **A --quick run: a check that everything works, too short for figures to publish.**"]
    lines += _alone_lines(run)
    return lines + ([f"  - Machine, software and images: as run {setting_as}"] if setting_as else _setting_lines(run))


def header(result: BenchResult, run_numbers: dict[str, int]) -> list[str]:
    model = result.model
    lines = ["# Benchmark: the service vs the raw engine vs a naive eager server", ""]
    lines += [
        f"- Model: {model.get('name')} v{model.get('version')} ({model.get('arch')}), canvas {model.get('canvas')}, max batch {model.get('max_batch')}"
    ]
    described: dict[tuple[str, ...], int] = {}  # a run's setting lines -> the run that showed them first
    for run in result.runs():
        number = run_numbers[run.started]
        shown = described.setdefault(tuple(_setting_lines(run)), number)
        lines += run_lines(result, run, f"Run {number}" if len(run_numbers) > 1 else "Run", str(shown) if shown != number else None)
    return [*lines, ""]


def markdown(result: BenchResult, plots: dict[str, dict[str, list[str]]]) -> str:
    """The report; a section measured by another run than the rest names its run. ``plots``: device -> section option ->
    the plots' file names."""
    run_numbers = {run.started: number for number, run in enumerate(result.runs(), 1)}
    lines = header(result, run_numbers)
    for device in result.devices:
        lines += device_section(device, plots.get(device.device, {}), run_numbers)
    return "\n".join(lines)
