"""What the v2 protocol says about the server and the model: server and model metadata, and Triton's model configuration."""

from __future__ import annotations

import json
from typing import Any

from service.engines import EngineInfo
from service.kserve.codec import INPUT, OUTPUTS
from service.manifest import ModelManifest
from service.schemas import Runtime

EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "fasterrcnn-serving", "version": version, "extensions": EXTENSIONS}


def model_metadata(manifest: ModelManifest, engine: EngineInfo) -> dict[str, Any]:
    """Inputs and outputs with the batch dimension first (-1), as Triton reports a batching model's."""
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": PLATFORMS[engine.engine],
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": name, "datatype": datatype, "shape": shape} for name, (datatype, shape, _) in OUTPUTS.items()],
    }


def model_config(manifest: ModelManifest, runtime: Runtime) -> dict[str, Any]:
    """Triton's model configuration (JSON form), as perf_analyzer and model navigators read it.

    Dims leave out the batch dimension (Triton's rule when max_batch_size > 0);
    per-image scalars are dims [1] reshaped to [], so a batch is sent as [N] or [N, 1].
    """
    scalar = {"dims": [1], "reshape": {"shape": []}}
    return {
        "name": manifest.name,
        "platform": PLATFORMS[runtime.engine],
        "max_batch_size": runtime.max_batch_size,
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", **scalar}],
        "output": [
            {"name": name, "data_type": f"TYPE_{datatype}", **(scalar if dims == [1] else {"dims": dims})}
            for name, (datatype, _, dims) in OUTPUTS.items()
        ],
        "dynamic_batching": {
            "preferred_batch_size": [runtime.max_batch_size],
            "max_queue_delay_microseconds": round(runtime.max_batch_wait_ms * 1000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(runtime.request_timeout_s * 1e6),
                "max_queue_size": runtime.max_queue,
            },
        },
        "instance_group": [{"name": manifest.name, "kind": "KIND_GPU" if runtime.device == "gpu" else "KIND_CPU", "count": 1}],
        "parameters": {
            "categories": {"string_value": json.dumps(manifest.categories)},
            "canvas": {"string_value": f"{manifest.canvas[0]}x{manifest.canvas[1]}"},
            "max_detections": {"string_value": str(manifest.max_detections)},
            "score_threshold": {"string_value": str(manifest.score_threshold)},
            "iou_threshold": {"string_value": str(manifest.iou_threshold)},
        },
    }
