"""TensorRT engine build from a model package, with TensorRT's Python API (GPU hosts only).

The engine covers the whole graph (NonMaxSuppression and RoiAlign are native
layers since TensorRT 8.5), with one optimization profile over the batch. The
engine and its manifest are written into the package, named after the GPU,
since an engine only runs on the GPU kind it was built for.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_export.package import ONNX_FILE, read_manifest


class EngineBuildError(RuntimeError):
    """The engine cannot be built here; the message says why."""


@dataclass(frozen=True)
class EngineConfig:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    fp16: bool = False
    workspace_mb: int = 2048

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineBuildError(
                f"the batch profile should satisfy 1 <= min <= opt <= max, got {self.min_batch}:{self.opt_batch}:{self.max_batch}"
            )


def parse_profile(text: str) -> tuple[int, int, int]:
    """``MIN:OPT:MAX`` -> (min, opt, max)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise EngineBuildError(f"--batch should be MIN:OPT:MAX, like 1:8:16, got {text!r}")
    low, opt, high = (int(p) for p in parts)
    return low, opt, high


def gpu_present() -> bool:
    return shutil.which("nvidia-smi") is not None and any(Path("/dev").glob("nvidia[0-9]*"))


def engine_file_name(gpu_name: str, fp16: bool) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"model.{slug}.{'fp16' if fp16 else 'fp32'}.engine"


def _import_tensorrt() -> Any:
    if not gpu_present():
        raise EngineBuildError("no NVIDIA GPU on this machine: TensorRT engines are built on, and for, the GPU that will run them")
    try:
        import tensorrt
    except ImportError as error:
        raise EngineBuildError("TensorRT's Python package is not installed: pip install -e '.[tensorrt]'") from error
    return tensorrt


def build_engine(package: Path, config: EngineConfig) -> Path:
    """Builds the engine into the package; returns its path. Raises EngineBuildError with every parser error."""
    trt = _import_tensorrt()
    manifest = read_manifest(package)
    if config.max_batch > int(manifest["max_batch"]):
        raise EngineBuildError(f"the profile's max batch {config.max_batch} exceeds the graph's max_batch {manifest['max_batch']}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    onnx_path = Path(package) / ONNX_FILE
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser reported {len(errors)} error(s):\n  " + "\n  ".join(errors))

    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.fp16:
        build_config.set_flag(trt.BuilderFlag.FP16)
    height, width = manifest["canvas"]
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "images", (config.min_batch, height, width, 3), (config.opt_batch, height, width, 3), (config.max_batch, height, width, 3)
    )
    build_config.add_optimization_profile(profile)
    cache_path = Path(package) / "tensorrt.timing.cache"
    cache = build_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    build_config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    cache_path.write_bytes(memoryview(build_config.get_timing_cache().serialize()))

    gpu_name = _gpu_name()
    engine_path = Path(package) / engine_file_name(gpu_name, config.fp16)
    engine_path.write_bytes(memoryview(serialized))
    engine_manifest = {
        "engine_file": engine_path.name,
        "tensorrt": trt.__version__,
        "gpu": gpu_name,
        "precision": "fp16" if config.fp16 else "fp32",
        "profile": {"images": {"min": config.min_batch, "opt": config.opt_batch, "max": config.max_batch}},
        "onnx_sha256": manifest["onnx_sha256"],
        "config": asdict(config),
    }
    engine_path.with_suffix(".json").write_text(json.dumps(engine_manifest, indent=2))
    return engine_path


def _gpu_name() -> str:
    import subprocess

    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False)
    names = result.stdout.strip().splitlines()
    return names[0].strip() if names else "unknown-gpu"
