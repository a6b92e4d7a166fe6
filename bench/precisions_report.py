"""The precisions section in Markdown: speed, accuracy and ratios per configuration, then its service at every client count."""

from __future__ import annotations

from bench.figures import PrecisionRow, PrecisionsSection
from bench.tables import DASH, engine_text, goals_table, level_cells, p50_p99_cells, table


def _ms_per_image(row: PrecisionRow, batch: int) -> float | None:
    """The median graph run at this batch size, per image."""
    raw = row.raw_at(batch)
    return round(raw.batch_latency_ms.p50 / batch, 2) if raw else None


def _times(ratio: float | None) -> str | None:
    return None if ratio is None else f"{ratio:.2f}x"


def runs_on(row: PrecisionRow) -> str:
    """The raw engine's description; for auto (no settings), the service's reason for its choice where it gives one."""
    if row.skipped is not None:
        return f"skipped: {row.skipped[:300]}"
    text = engine_text(row.engine) if row.engine else DASH
    choice = row.service.runtime.get("choice") if row.service and not row.settings else None
    if choice:
        text += f"; chosen: {choice.get('reason', choice) if isinstance(choice, dict) else choice}"
    return text


def summary_table(section: PrecisionsSection) -> list[str]:
    batches = sorted({raw.batch for row in section.rows for raw in row.raw})
    eager = section.eager
    clients = section.ratio_clients
    header = ["configuration", "runs on", *(f"graph ms/image, batch {b}" for b in batches), f"service images/s, {clients} clients"]
    header += [f"images/s / {section.baseline}", f"batch-1 latency / {section.baseline}", "mAP@[.5:.95]", "mAP@.5", "mAP - eager's"]
    rows: list[list[object]] = []
    for row in section.rows:
        accuracy = row.accuracy
        difference = f"{accuracy.map - eager.map:+.4f}" if accuracy and eager else None
        rows.append(
            [
                row.label,
                runs_on(row),
                *(_ms_per_image(row, b) for b in batches),
                row.images_per_s(clients),
                _times(row.throughput_ratio),
                _times(row.latency_ratio),
                accuracy.map if accuracy else None,
                accuracy.map50 if accuracy else None,
                difference,
            ]
        )
    if eager is not None:
        rows.append(
            ["eager checkpoint", "torch (the checkpoint the package came from)", *[None] * (len(batches) + 3), eager.map, eager.map50, None]
        )
    return table(header, rows)


def service_table(section: PrecisionsSection) -> list[str]:
    header = ["configuration", "clients", "requests", "images/s", "p50 ms", "p99 ms", "errors", "rejected", "mean batch"]
    rows: list[list[object]] = []
    for row in section.rows:
        if row.service is None:
            continue
        rows += [level_cells(row.label, level, p50_p99_cells) for level in row.service.levels]
        if row.service.error:
            rows.append([row.label, None, f"not measured: {row.service.error[:200]}", *[None] * 6])
    return table(header, rows)


def precisions_section(section: PrecisionsSection, plots: list[str]) -> list[str]:
    scenes = section.eval_set
    accuracy = (
        f"mAP on {scenes.images} held-out synthetic scenes (`python -m model_export synth --seed {scenes.seed}`), detections at "
        f"score >= {scenes.score_threshold:g}, scored with pycocotools as `python -m model_export evaluate` does."
        if scenes.unscored is None
        else f"No mAP: {scenes.unscored}."
    )
    lines = [
        "Every engine and precision this machine runs, in one run. The graph alone (no HTTP, canvases ready): median time of "
        f"a run over {section.rounds} rounds, per image, the configurations alternating round by round. The service: images/s "
        f"answered 200 over real HTTP. Ratios against {section.baseline} (below 1 is better for latency). {accuracy}",
        "",
        *summary_table(section),
        "",
        "The service at every client count (latency percentiles of the 200 answers):",
        "",
        *service_table(section),
        "",
        "Goals:",
        "",
        *goals_table(section.goals),
        "",
    ]
    return lines + [f"![{name}]({name})" for name in plots] + [""]
