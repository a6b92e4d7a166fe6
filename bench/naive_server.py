"""The naive baseline: the eager torchvision model behind a minimal FastAPI endpoint, one request at a time.

    python -m bench.naive_server --checkpoint models/default/model.pt --package models/default/package --port 8001

This is what most tutorials deploy: an ``async def`` route that decodes the
upload and calls the model inline. The event loop is blocked for the whole
request, so requests are served strictly one after another, with no batching
and no decode threads. It is the anti-pattern STYLE.md warns about, on purpose:
the benchmark measures what the service gains over it.

Same weights (the checkpoint), same canvas, thresholds and detection limit
(the package's manifest) and same letterboxing as the service, so both do the
same work per image. ``POST /detect`` takes the raw image body and answers the
detections in image pixels.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from model_export.checkpoint import LoadedModel, load_checkpoint
from service.letterbox import letterbox
from service.manifest import ModelManifest, read_manifest


def load_model(checkpoint: Path, manifest: ModelManifest, device: torch.device) -> LoadedModel:
    """The checkpoint's model on the package's canvas, with the graph's run-time defaults, in eval mode on ``device``.

    model_export.export.eager_thresholds does the same, but importing it would load ONNX into this process.
    """
    loaded = load_checkpoint(checkpoint, canvas=manifest.canvas)
    heads = loaded.model.roi_heads
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (
        manifest.score_threshold,
        manifest.iou_threshold,
        manifest.max_detections,
    )
    loaded.model.eval().to(device)
    return loaded


def create_app(loaded: LoadedModel, device: torch.device) -> FastAPI:
    app = FastAPI(title="naive eager baseline")
    model = loaded.model

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"engine": "torch eager", "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}

    @app.post("/detect")
    async def detect(request: Request) -> dict[str, Any]:
        # Deliberately inline in the event loop: one request at a time (see the module docstring).
        image = Image.open(io.BytesIO(await request.body())).convert("RGB")
        canvas, placement = letterbox(image, loaded.canvas)
        tensor = torch.from_numpy(canvas).permute(2, 0, 1).float().div(255).to(device)
        with torch.inference_mode():
            output = model([tensor])[0]
        boxes = placement.boxes_to_image(output["boxes"].cpu().numpy().astype(np.float64))
        return {
            "image": {"width": image.width, "height": image.height},
            "detections": [
                {"box": [float(v) for v in box], "score": float(score), "label": int(label), "class_name": loaded.categories[int(label)]}
                for box, score, label in zip(boxes, output["scores"].tolist(), output["labels"].tolist(), strict=True)
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--package", type=Path, required=True, help="the model package whose canvas and thresholds to use")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    manifest = read_manifest(args.package)
    device = torch.device(args.device)
    loaded = load_model(args.checkpoint, manifest, device)
    # A short drain: once the benchmark stops it, requests still queued need no answer.
    app = create_app(loaded, device)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
