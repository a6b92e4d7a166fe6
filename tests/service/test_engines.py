"""The engines' plain parts, which run anywhere: execution provider choice and options, engine lookup, and the TensorRT
engine's checks of batch, shapes and tensors (the engines themselves run in tests/model_export/test_engine_gpu.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from service.engines.engine_manifest import BatchProfile, EngineManifest, find_engine, gpu_slug
from service.engines.onnxruntime import OnnxRuntimeEngine, check_started, choose_providers, provider_options, uses_gpu
from service.engines.tensorrt import EngineMismatch, check_io, check_output_shapes, pad_batch, padded_size, profile_of
from service.manifest import PackageError, read_manifest

DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "default" / "package"
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


# Execution providers


def test_auto_takes_every_offered_provider_fastest_first() -> None:
    assert choose_providers(None, [CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert choose_providers(None, [CPU, CUDA]) == [CUDA, CPU]


def test_auto_on_this_machines_onnxruntime_takes_what_it_offers() -> None:
    offered = ort.get_available_providers()
    chosen = choose_providers(None, offered)
    assert chosen and set(chosen) <= set(offered) and chosen[-1] == CPU


def test_asked_providers_keep_their_order() -> None:
    assert choose_providers(["cuda", "cpu"], [TRT, CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(["cpu"], [TRT, CUDA, CPU]) == [CPU]


def test_asking_for_a_provider_onnxruntime_lacks_names_it_and_what_there_is() -> None:
    with pytest.raises(
        RuntimeError, match=r"asks for tensorrt, but this onnxruntime offers only CUDAExecutionProvider, CPUExecutionProvider"
    ):
        choose_providers(["tensorrt", "cpu"], [CUDA, CPU])


def test_onnxruntime_engine_refuses_cuda_where_this_onnxruntime_has_none() -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeError, match="asks for cuda"):
        OnnxRuntimeEngine(DEFAULT_PACKAGE, read_manifest(DEFAULT_PACKAGE), providers=["cuda"])


def test_tensorrt_provider_options_carry_precision_and_cache(tmp_path: Path) -> None:
    cache = tmp_path / "trt-cache"
    assert provider_options(TRT, fp16=True, cache_dir=cache) == {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    assert cache.is_dir()
    assert provider_options(TRT, fp16=False, cache_dir=None) == {"trt_fp16_enable": False}


def test_cuda_and_cpu_providers_get_no_tensorrt_options(tmp_path: Path) -> None:
    assert provider_options(CUDA, fp16=True, cache_dir=tmp_path / "cache") == {}
    assert provider_options(CPU, fp16=True, cache_dir=None) == {}
    assert not (tmp_path / "cache").exists()


def test_a_provider_asked_by_name_that_did_not_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="could not start TensorrtExecutionProvider"):
        check_started([TRT, CUDA, CPU], [CUDA, CPU], explicit=True)


def test_auto_providers_that_did_not_start_are_reported_not_fatal() -> None:
    assert check_started([TRT, CUDA, CPU], [CUDA, CPU], explicit=False) == [TRT]
    assert check_started([CUDA, CPU], [CUDA, CPU], explicit=True) == []


def test_only_cuda_and_tensorrt_count_as_gpu_providers() -> None:
    assert uses_gpu([CUDA, CPU]) and uses_gpu([TRT])
    assert not uses_gpu([CPU])


# Engine lookup


def _engine(package: Path, gpu: str, precision: str, onnx_sha256: str = "abc", with_file: bool = True) -> EngineManifest:
    stem = EngineManifest.file_stem(gpu, precision)
    info = EngineManifest.model_validate(
        {
            "engine_file": f"{stem}.engine",
            "tensorrt": "11.4.0.106",
            "gpu": gpu,
            "precision": precision,
            "profile": {"min": 1, "opt": 8, "max": 16},
            "onnx_sha256": onnx_sha256,
            "graph_file": "model.onnx",
            "graph_sha256": "def",
            "workspace_mb": 2048,
        }
    )
    if with_file:
        (package / info.engine_file).write_bytes(b"engine")
    info.write(package)
    return info


def test_engine_file_names_carry_the_gpu_and_precision() -> None:
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert EngineManifest.file_stem("NVIDIA L4", "fp16") == "model.nvidia-l4.fp16"


def test_find_engine_takes_this_gpus_engine(tmp_path: Path) -> None:
    _engine(tmp_path, "NVIDIA A100-SXM4-80GB", "fp16")
    wanted = _engine(tmp_path, "NVIDIA L4", "fp16")
    path, info = find_engine(tmp_path, "NVIDIA L4", "abc")
    assert path == tmp_path / "model.nvidia-l4.fp16.engine" and info == wanted


def test_find_engine_prefers_the_most_reduced_precision_unless_one_is_asked(tmp_path: Path) -> None:
    _engine(tmp_path, "NVIDIA L4", "fp32")
    _engine(tmp_path, "NVIDIA L4", "fp16")
    assert find_engine(tmp_path, "NVIDIA L4", "abc")[1].precision == "fp16"
    assert find_engine(tmp_path, "NVIDIA L4", "abc", precision="fp32")[1].precision == "fp32"
    with pytest.raises(PackageError, match=r"no int8 TensorRT engine built for NVIDIA L4 \(engines here: NVIDIA L4 fp16, NVIDIA L4 fp32\)"):
        find_engine(tmp_path, "NVIDIA L4", "abc", precision="int8")


def test_find_engine_names_the_engines_there_are_for_other_gpus(tmp_path: Path) -> None:
    _engine(tmp_path, "NVIDIA A100-SXM4-80GB", "fp16")
    with pytest.raises(PackageError, match=r"no TensorRT engine built for NVIDIA L4 \(engines here: NVIDIA A100-SXM4-80GB fp16\); run: "):
        find_engine(tmp_path, "NVIDIA L4", "abc")


def test_find_engine_refuses_an_engine_of_another_model_onnx(tmp_path: Path) -> None:
    _engine(tmp_path, "NVIDIA L4", "fp16", onnx_sha256="old")
    with pytest.raises(PackageError, match=r"built from another model\.onnx; rebuild"):
        find_engine(tmp_path, "NVIDIA L4", "new")


def test_find_engine_skips_a_manifest_whose_engine_file_is_gone(tmp_path: Path) -> None:
    _engine(tmp_path, "NVIDIA L4", "fp16", with_file=False)
    _engine(tmp_path, "NVIDIA L4", "fp32")
    assert find_engine(tmp_path, "NVIDIA L4", "abc")[1].precision == "fp32"


def test_find_engine_names_a_broken_engine_manifest(tmp_path: Path) -> None:
    (tmp_path / "model.nvidia-l4.fp16.json").write_text('{"engine_file": "model.nvidia-l4.fp16.engine"}')
    with pytest.raises(PackageError, match=r"model\.nvidia-l4\.fp16\.json: not a valid TensorRT engine manifest"):
        find_engine(tmp_path, "NVIDIA L4", "abc")


def test_find_engine_ignores_the_package_manifest(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    _engine(tmp_path, "NVIDIA L4", "fp32")
    assert find_engine(tmp_path, "NVIDIA L4", "abc")[1].precision == "fp32"


# The TensorRT engine's checks


def test_batch_profile_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="1 <= min <= opt <= max, got 4:2:8"):
        BatchProfile(min=4, opt=2, max=8)


def test_a_batch_below_the_profiles_min_runs_padded_to_it() -> None:
    profile = BatchProfile(min=2, opt=4, max=8)
    assert [padded_size(batch, profile) for batch in (1, 2, 5, 8)] == [2, 2, 5, 8]


def test_a_batch_outside_the_profile_is_refused() -> None:
    profile = BatchProfile(min=2, opt=4, max=8)
    for batch in (0, 9):
        with pytest.raises(ValueError, match=f"a batch of {batch} is outside the engine's profile 2..8"):
            padded_size(batch, profile)


def test_padding_appends_blank_canvases_and_keeps_the_images() -> None:
    images = np.full((1, 4, 6, 3), 7, dtype=np.uint8)
    padded = pad_batch(images, 3)
    assert padded.shape == (3, 4, 6, 3) and padded.dtype == np.uint8
    assert (padded[0] == 7).all() and (padded[1:] == 0).all()
    assert pad_batch(images, 1) is images


def test_output_shapes_must_be_padded_to_k() -> None:
    check_output_shapes({"num_detections": (2,), "boxes": (2, 100, 4), "scores": (2, 100), "labels": (2, 100)}, 2, 100)
    with pytest.raises(EngineMismatch, match=r"boxes is \(2, -1, 4\), expected \(2, 100, 4\); scores is \(2, 50\), expected \(2, 100\)"):
        check_output_shapes({"num_detections": (2,), "boxes": (2, -1, 4), "scores": (2, 50), "labels": (2, 100)}, 2, 100)


def _contract() -> dict[str, tuple[bool, np.dtype]]:
    return {
        "images": (True, np.dtype(np.uint8)),
        "score_threshold": (True, np.dtype(np.float32)),
        "iou_threshold": (True, np.dtype(np.float32)),
        "num_detections": (False, np.dtype(np.int64)),
        "boxes": (False, np.dtype(np.float32)),
        "scores": (False, np.dtype(np.float32)),
        "labels": (False, np.dtype(np.int32)),  # TensorRT may narrow int64 outputs
    }


def test_engine_tensors_of_the_graphs_contract_pass() -> None:
    check_io(_contract())


def test_engine_tensors_that_differ_are_each_named() -> None:
    tensors = _contract()
    del tensors["scores"]
    tensors["boxes"] = (False, np.dtype(np.float16))
    tensors["images"] = (False, np.dtype(np.uint8))
    tensors["extra"] = (False, np.dtype(np.float32))
    with pytest.raises(EngineMismatch) as caught:
        check_io(tensors)
    message = str(caught.value)
    for part in ("'scores' is missing", "'boxes' is float16, expected float32", "'images' should be an input", "'extra' is not a tensor"):
        assert part in message


def test_profile_is_read_from_the_engines_image_shapes() -> None:
    shapes = [(1, 320, 320, 3), (8, 320, 320, 3), (16, 320, 320, 3)]
    assert profile_of(shapes, (320, 320)) == BatchProfile(min=1, opt=8, max=16)
    with pytest.raises(EngineMismatch, match=r"images of shape \(1, 256, 256, 3\); the package's canvas is 320x320"):
        profile_of([(1, 256, 256, 3), (8, 256, 256, 3), (16, 256, 256, 3)], (320, 320))
