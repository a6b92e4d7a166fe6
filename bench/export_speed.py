"""ONNX Runtime (CPU, 2 threads) vs torchvision eager, per image, at batch 1, 4 and 8, same canvas and weights.

    python -m bench.export_speed [--checkpoint models/default/model.pt] [--package models/default/package]

Both run alternately in one process, so that machine noise hits both alike;
the figure is the median over rounds. Writes bench/results/export_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.machine import describe
from model_export.checkpoint import load_checkpoint
from model_export.synth import generate_image
from service.letterbox import letterbox

RESULTS = Path(__file__).resolve().parent / "results"


def _canvases(canvas: tuple[int, int], count: int) -> np.ndarray:
    return np.stack([letterbox(generate_image(seed=31337, index=i, empty_fraction=0.0)[0], canvas)[0] for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/default/model.pt"))
    parser.add_argument("--package", type=Path, default=Path("models/default/package"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model.eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.package / "model.onnx"), options, providers=["CPUExecutionProvider"])
    thresholds = {"score_threshold": np.array(0.05, np.float32), "iou_threshold": np.array(0.5, np.float32)}
    canvases = _canvases(loaded.canvas, 8)

    def eager(batch: np.ndarray) -> None:
        with torch.inference_mode():
            model([torch.from_numpy(c).permute(2, 0, 1).float().div(255) for c in batch])

    def onnx(batch: np.ndarray) -> None:
        session.run(None, {"images": batch, **thresholds})

    rows = []
    for batch_size in (1, 4, 8):
        batch = canvases[:batch_size]
        eager(batch)  # warm-up
        onnx(batch)
        times: dict[str, list[float]] = {"eager": [], "onnxruntime": []}
        for _ in range(args.rounds):
            for name, run in (("eager", eager), ("onnxruntime", onnx)):
                started = time.perf_counter()
                run(batch)
                times[name].append((time.perf_counter() - started) / batch_size * 1000)
        eager_ms, onnx_ms = statistics.median(times["eager"]), statistics.median(times["onnxruntime"])
        rows.append(
            {
                "batch": batch_size,
                "eager_ms_per_image": round(eager_ms, 2),
                "onnxruntime_ms_per_image": round(onnx_ms, 2),
                "ratio": round(onnx_ms / eager_ms, 3),
            }
        )
        print(rows[-1], flush=True)

    result = {
        "benchmark": "export_speed",
        "canvas": list(loaded.canvas),
        "threads": args.threads,
        "rows": rows,
        "machine": describe(),
        "torch": torch.__version__,
        "rounds": args.rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_speed.json").write_text(json.dumps(result, indent=2))
    table = ["| batch | eager ms/image | ONNX Runtime ms/image | ratio (goal <= 0.6) |", "|---|---|---|---|"]
    table += [f"| {r['batch']} | {r['eager_ms_per_image']} | {r['onnxruntime_ms_per_image']} | {r['ratio']} |" for r in rows]
    (RESULTS / "export_speed.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
