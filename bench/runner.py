"""One benchmark run: per device, each asked section in turn, all on the same fixed set of JPEGs.

The sections (bench.figures.SECTIONS) run in this order: systems (servers in processes of their own),
service-throughput (the batcher in this process against the service), export-speed (it loads torch here),
precisions (every engine and precision: raw graphs here, then their servers, then the eager checkpoint's mAP),
protocols (one server over HTTP and gRPC), train-step (training iterations, two RoIAligns, in this process).
Progress goes to stderr.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import export_speed, precisions, protocols, service_throughput, systems, train_step
from bench.config import BenchConfig, progress
from bench.figures import BenchResult, DeviceResult, Run
from bench.images import ImageSet, write_images
from bench.machine import OtherWork, describe
from service.manifest import ModelManifest, read_manifest


def run(config: BenchConfig, command: str) -> BenchResult:
    """Measures ``config.sections`` on ``config.devices``; every section records this run (``command``, the machine)."""
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    others = OtherWork()
    manifest = read_manifest(config.package)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as scratch:
        images = write_images(Path(scratch), config.image_count)
        progress(f"{len(images.bodies)} JPEGs: {images.describe()}")
        this_run = Run(
            started=started_at,
            seconds=0.0,
            quick=config.quick,
            command=command,
            machine=describe(),
            config=config.as_json() | {"images": images.describe()},
        )
        devices = [run_device(config, manifest, images, device, this_run) for device in config.devices]
    finished = this_run.model_copy(update={"seconds": round(time.monotonic() - started, 1), "others_cpu_share": others.share()})
    for device in devices:
        for section in device.sections().values():
            section.run = finished
    return BenchResult(model=model_facts(config, manifest), devices=devices)


def run_device(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, this_run: Run) -> DeviceResult:
    result = DeviceResult(device=device)
    if "systems" in config.sections:
        result.systems = systems.measure(config, manifest, images, device, this_run)
    if "service-throughput" in config.sections:
        result.service_throughput = service_throughput.measure(config, manifest, images, device, this_run)
    if "export-speed" in config.sections:
        result.export_speed = export_speed.measure(config, manifest, images, device, this_run)
    if "precisions" in config.sections:
        result.precisions = precisions.measure(config, manifest, images, device, this_run)
    if "protocols" in config.sections:
        result.protocols = protocols.measure(config, manifest, images, device, this_run)
    if "train-step" in config.sections:
        result.train_step = train_step.measure(config, manifest, images, device, this_run)
    return result


def model_facts(config: BenchConfig, manifest: ModelManifest) -> dict[str, Any]:
    """What identifies the model measured: a report merges only the figures of one model."""
    return {
        "checkpoint": str(config.checkpoint),
        "package": str(config.package),
        "name": manifest.name,
        "version": manifest.version,
        "arch": manifest.arch,
        "canvas": list(manifest.canvas),
        "max_batch": manifest.max_batch,
        "onnx_sha256": manifest.onnx_sha256,
    }
