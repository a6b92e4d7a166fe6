"""The batch size distribution between two scrapes of the service's /metrics (``detector_batch_size``)."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from bench.figures import BatchSizes

BATCH_METRIC = "detector_batch_size"


def _histogram(text: str) -> tuple[dict[float, float], float, float]:
    """The histogram's cumulative bucket counts by upper bound, its sum and its count."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != BATCH_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return buckets, total, count


def _bucket_name(lower: float, upper: float) -> str:
    """Batch sizes are whole numbers: the bucket (lower, upper] holds lower+1 .. upper."""
    first = int(lower) + 1
    if math.isinf(upper):
        return f">{int(lower)}"
    return str(first) if first == int(upper) else f"{first}-{int(upper)}"


def batch_sizes(before: str, after: str) -> BatchSizes:
    """Graph runs that happened between the two scrapes, by batch size (as finely as the buckets allow)."""
    start, start_sum, start_count = _histogram(before)
    end, end_sum, end_count = _histogram(after)
    counts: dict[str, int] = {}
    lower, below = 0.0, 0.0
    for upper in sorted(end):
        cumulative = end[upper] - start.get(upper, 0.0)
        if cumulative - below > 0:
            counts[_bucket_name(lower, upper)] = round(cumulative - below)
        lower, below = upper, cumulative
    batches = round(end_count - start_count)
    mean = round((end_sum - start_sum) / batches, 2) if batches else None
    return BatchSizes(batches=batches, mean=mean, counts=counts)
