"""The TensorRT execution provider's precision options, and that the ONNX Runtime engine asks for int8 exactly when it
runs the package's int8 (Q/DQ) graph. Runs anywhere: the session is faked, the provider itself runs in
tests/model_export/test_engine_gpu.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from service.engines.base import Precision
from service.engines.onnxruntime import OnnxRuntimeEngine, provider_options
from service.manifest import PackageError, read_manifest

DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "default" / "package"
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.mark.parametrize("fp16", [False, True])
def test_the_int8_graph_turns_tensorrt_int8_on_and_keeps_the_fp16_setting(fp16: bool) -> None:
    assert provider_options(TRT, fp16=fp16, cache_dir=None, int8=True) == {"trt_fp16_enable": fp16, "trt_int8_enable": True}


def test_the_float_graph_leaves_tensorrt_int8_off() -> None:
    assert provider_options(TRT, fp16=True, cache_dir=None) == {"trt_fp16_enable": True}
    assert provider_options(TRT, fp16=False, cache_dir=None, int8=False) == {"trt_fp16_enable": False}


def test_int8_asks_for_no_calibration_table(tmp_path: Path) -> None:
    """A Q/DQ graph carries its scales: a table name would make the provider read (and need) a calibration file."""
    options = provider_options(TRT, fp16=False, cache_dir=tmp_path / "cache", int8=True)
    assert options["trt_int8_enable"] is True
    assert not [name for name in options if "calibration" in name]


def test_cuda_and_cpu_providers_get_no_int8_option() -> None:
    assert provider_options(CUDA, fp16=True, cache_dir=None, int8=True) == {}
    assert provider_options(CPU, fp16=False, cache_dir=None, int8=True) == {}


class _SessionNotMade(Exception):
    """Raised by the fake session: the options were recorded, there is no provider to run them."""


def _session_the_engine_asks_for(monkeypatch: pytest.MonkeyPatch, precision: Precision, trt_fp16: bool) -> tuple[str, dict[str, Any]]:
    """(graph file, provider -> options) that OnnxRuntimeEngine hands ONNX Runtime, every provider offered, the session faked."""
    asked: dict[str, Any] = {}

    def fake_session(path: str, options: ort.SessionOptions, providers: list[tuple[str, dict[str, Any]]]) -> None:
        asked.update(path=path, providers=dict(providers))
        raise _SessionNotMade

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda: None)
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    manifest = read_manifest(DEFAULT_PACKAGE)
    with pytest.raises(PackageError, match="ONNX Runtime cannot load this graph") as raised:
        OnnxRuntimeEngine(DEFAULT_PACKAGE, manifest, ["tensorrt", "cuda", "cpu"], trt_fp16=trt_fp16, precision=precision)
    assert isinstance(raised.value.__cause__, _SessionNotMade)
    return Path(asked["path"]).name, asked["providers"]


def test_the_engine_running_the_int8_graph_asks_tensorrt_for_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    graph, providers = _session_the_engine_asks_for(monkeypatch, "int8", trt_fp16=True)
    assert graph == "model.int8.onnx"
    assert providers == {TRT: {"trt_fp16_enable": True, "trt_int8_enable": True}, CUDA: {}, CPU: {}}


def test_the_engine_running_the_float_graph_asks_tensorrt_for_fp16_only(monkeypatch: pytest.MonkeyPatch) -> None:
    graph, providers = _session_the_engine_asks_for(monkeypatch, "f32", trt_fp16=True)
    assert graph == "model.onnx"
    assert providers[TRT] == {"trt_fp16_enable": True}
