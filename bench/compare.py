"""Ratios pair by pair at each client count, and each section's goals checked against its figures."""

from __future__ import annotations

from bench.figures import ExportSpeedSection, Goal, LoadResult, Ratio, ServiceThroughputSection, SystemsSection

GOAL_CLIENTS = 16
GOAL_RAW_FRACTION = 0.9
GOAL_NAIVE_FACTOR = 2.0
GOAL_RSS_MB = 400.0
GOAL_BATCHER_FRACTION = 0.85  # the service against the raw engine behind the same batcher
GOAL_GRAPH_FRACTION = 0.6  # the exported graph's time per image against the eager model's
SERVICES = ("service_batching", "service_unbatched")


def raw_name(batch: int) -> str:
    return f"raw_engine_batch_{batch}"


def _load(device: SystemsSection, name: str, clients: int) -> LoadResult | None:
    system = device.system(name)
    level = system.level(clients) if system is not None else None
    return level.load if level is not None else None


def _divide(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _pair(device: SystemsSection, clients: int, numerator: str, denominator: str) -> Ratio:
    a, b = _load(device, numerator, clients), _load(device, denominator, clients)
    if a is None or b is None:
        return Ratio(clients=clients, numerator=numerator, denominator=denominator, throughput=None)
    p99 = _divide(a.latency_ms.p99, b.latency_ms.p99) if a.latency_ms and b.latency_ms else None
    return Ratio(clients=clients, numerator=numerator, denominator=denominator, throughput=_divide(a.images_per_s, b.images_per_s), p99=p99)


def _against_raw(device: SystemsSection, clients: int, numerator: str, batch: int) -> Ratio:
    load, raw = _load(device, numerator, clients), device.raw(batch)
    throughput = _divide(load.images_per_s if load else None, raw.images_per_s if raw else None)
    return Ratio(clients=clients, numerator=numerator, denominator=raw_name(batch), throughput=throughput)


def ratios(device: SystemsSection) -> list[Ratio]:
    """At each client count: batching on vs off, each service vs the naive baseline, and each against the raw
    engine at the largest batch size it may run (the service's max batch with batching, 1 without)."""
    clients = sorted({level.load.clients for system in device.systems for level in system.levels})
    found = []
    for c in clients:
        found += [_pair(device, c, "service_batching", "service_unbatched")]
        found += [_pair(device, c, name, "naive") for name in SERVICES]
        found += [_against_raw(device, c, "service_batching", device.service_max_batch), _against_raw(device, c, "service_unbatched", 1)]
    return found


def _ratio(device: SystemsSection, numerator: str, denominator: str) -> Ratio | None:
    return next((r for r in device.ratios if r.clients == GOAL_CLIENTS and r.numerator == numerator and r.denominator == denominator), None)


def _throughput_goal(text: str, ratio: Ratio | None, at_least: float) -> Goal:
    if ratio is None or ratio.throughput is None:
        return Goal(goal=text, measured="not measured", met=None)
    return Goal(goal=text, measured=f"{ratio.throughput:.2f}x", met=ratio.throughput >= at_least)


def _p99_goal(device: SystemsSection) -> Goal:
    text = f"service at {GOAL_CLIENTS} clients: lower p99 than the naive baseline"
    service, naive = _load(device, "service_batching", GOAL_CLIENTS), _load(device, "naive", GOAL_CLIENTS)
    if not (service and naive and service.latency_ms and naive.latency_ms):
        return Goal(goal=text, measured="not measured", met=None)
    measured = f"{service.latency_ms.p99:.0f} ms vs {naive.latency_ms.p99:.0f} ms"
    return Goal(goal=text, measured=measured, met=service.latency_ms.p99 < naive.latency_ms.p99)


def _rss_goal(device: SystemsSection) -> Goal:
    text = f"serving process peak RSS <= {GOAL_RSS_MB:.0f} MB under load"
    peaks = [s.peak_rss_mb for s in device.systems if s.name in SERVICES and s.peak_rss_mb is not None]
    if not peaks:
        return Goal(goal=text, measured="not measured", met=None)
    return Goal(goal=text, measured=f"{max(peaks):.0f} MB", met=max(peaks) <= GOAL_RSS_MB)


def goals(device: SystemsSection) -> list[Goal]:
    """The systems section's goals for the default model on this machine; ``device.ratios`` must be filled first."""
    batch = device.service_max_batch
    on_raw = f"service with batching at {GOAL_CLIENTS} clients >= {GOAL_RAW_FRACTION}x the raw engine at batch {batch}"
    on_naive = f"service at {GOAL_CLIENTS} clients >= {GOAL_NAIVE_FACTOR:.0f}x the naive baseline's throughput"
    return [
        _throughput_goal(on_raw, _ratio(device, "service_batching", raw_name(batch)), GOAL_RAW_FRACTION),
        _throughput_goal(on_naive, _ratio(device, "service_batching", "naive"), GOAL_NAIVE_FACTOR),
        _p99_goal(device),
        _rss_goal(device),
    ]


def throughput_goals(section: ServiceThroughputSection) -> list[Goal]:
    text = f"service at {section.clients} clients >= {GOAL_BATCHER_FRACTION}x the raw engine behind the same batcher (no HTTP)"
    if section.ratio is None:
        return [Goal(goal=text, measured="not measured", met=None)]
    measured = f"{section.ratio:.3f}x ({section.service_images_per_s} vs {section.raw_images_per_s} images/s)"
    return [Goal(goal=text, measured=measured, met=section.ratio >= GOAL_BATCHER_FRACTION)]


def export_goals(section: ExportSpeedSection) -> list[Goal]:
    return [
        Goal(
            goal=f"exported graph <= {GOAL_GRAPH_FRACTION}x the eager time per image at batch {row.batch}",
            measured=f"{row.ratio:.2f}x ({row.graph_ms_per_image} vs {row.eager_ms_per_image} ms)",
            met=row.ratio <= GOAL_GRAPH_FRACTION,
        )
        for row in section.rows
    ]
