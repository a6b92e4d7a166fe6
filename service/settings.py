"""The service's one settings object, read from ``DETECTOR_*`` environment variables and validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engines.base import GRAPH_OF
from service.manifest import PackageError, read_manifest

ENV_PREFIX = "DETECTOR_"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default" / "package"

MIN_API_KEY_LENGTH = 16
SECRET_FIELDS = frozenset({"api_keys"})
Provider = Literal["tensorrt", "cuda", "cpu"]
PrecisionSetting = Literal["auto", "f32", "bf16", "int8"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # The model
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="model package directory (model.onnx + model.json): a repository of one")
    model_repository: Path | None = Field(
        None, description="a model repository, <name>/<version>/ packages (README: Model repository); model_dir is then unused"
    )
    load_models: str = Field("*", description="the repository's models loaded at start, comma-separated; '*': every one")
    default_model: str | None = Field(None, description="the model a request that names none gets; default: the only one")
    max_loaded_versions: PositiveInt = Field(4, description="model versions loaded at once at most; a load past it is refused")
    model_control: Literal["none", "explicit"] = Field(
        "none", description="explicit: /v2/repository/models/{name}/load and /unload (and gRPC's) change what is served; none: refused"
    )
    engine: Literal["auto", "onnxruntime", "tensorrt", "openvino"] = Field(
        "auto", description="auto: onnxruntime, or openvino where it runs the chosen precision faster on this CPU"
    )
    precision: PrecisionSetting = Field(
        "auto",
        description="f32 and bf16 (openvino) run the package's float graph, int8 its int8 graph; auto: the fastest precision "
        "that keeps the model's accuracy on this machine, checked at start on the package's probe images "
        "(the float graph where nothing reduced is faster or accurate enough; tensorrt: the most reduced engine built)",
    )
    providers: str = Field("auto", description="'auto' (TensorRT, CUDA, CPU: what onnxruntime offers) or a list like 'cuda,cpu'")
    intra_op_threads: int = Field(0, ge=0, description="threads per inference (ONNX Runtime's intra-op, OpenVINO's); 0 lets it choose")
    trt_fp16: bool = False
    trt_cache_dir: Path | None = Field(None, description="TensorRT execution provider engine cache")
    warmup: bool = True

    # Dynamic batching
    max_batch_size: PositiveInt = 8
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_queue: PositiveInt = 64
    request_timeout_s: PositiveFloat = 10.0

    # Limits on input
    max_body_bytes: PositiveInt = 20 * 1024 * 1024
    max_image_pixels: PositiveInt = 40_000_000
    decode_threads: PositiveInt = 2
    body_timeout_s: PositiveFloat = Field(30.0, description="time a client has to send its whole body; then 408")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line + headers; larger ones are refused")
    max_connections: PositiveInt = Field(512, description="open connections at most; beyond, 503 before any parsing")
    keep_alive_s: PositiveFloat = Field(5.0, description="idle keep-alive connections close after this")

    # Faults
    unhealthy_after_failures: PositiveInt = Field(3, description="consecutive failed batches that turn readiness false")
    recovery_probe_s: PositiveFloat = Field(5.0, description="while unhealthy, a probe batch runs this often")

    # Access
    api_keys: SecretStr = Field(SecretStr(""), description="comma-separated API keys; empty: no authentication")
    protect_health: bool = Field(False, description="whether /health/* and /metrics need a key too")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS ('*' for any); empty: CORS off")

    # Server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535, description="the KServe v2 gRPC port (8001 as Triton's); 0: no gRPC server")
    grpc_max_message_mb: PositiveInt = Field(64, description="the largest gRPC message received, in MiB; a larger one is refused")
    shutdown_grace_s: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("model_dir")
    @classmethod
    def _is_a_package(cls, value: Path) -> Path:
        if not (value / "model.json").is_file():
            raise ValueError(f"{value} is not a model package directory (no model.json in it)")
        try:
            read_manifest(value)  # a broken manifest stops the start here, like any bad setting
        except PackageError as error:
            raise ValueError(str(error)) from error
        return value

    @field_validator("model_repository", "default_model", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_repository")
    @classmethod
    def _is_a_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory (a model repository holds <name>/<version>/ model packages)")
        return value

    @field_validator("precision")
    @classmethod
    def _engine_runs_precision(cls, value: PrecisionSetting, info: ValidationInfo) -> PrecisionSetting:
        """bf16 is OpenVINO's alone; ONNX Runtime and OpenVINO need the package's graph of that precision (TensorRT looks up
        its engines at load)."""
        engine, package = info.data.get("engine"), info.data.get("model_dir")
        if info.data.get("model_repository") is not None:
            package = None  # each version's package is checked when it loads
        if value == "auto" or engine is None:
            return value
        if value == "bf16" and engine not in ("auto", "openvino"):
            raise ValueError(f"bf16 is run by the openvino engine only (DETECTOR_ENGINE=openvino); {engine} runs f32 or int8")
        if engine == "tensorrt" or package is None:
            return value
        precisions = read_manifest(package).precisions
        if GRAPH_OF[value] not in precisions:
            raise ValueError(f"the package {package} has no {GRAPH_OF[value]} graph; it has {', '.join(precisions)}")
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "auto":
            return value
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in ("tensorrt", "cuda", "cpu")]
        if not names or unknown:
            raise ValueError(f"should be 'auto' or a comma-separated list of tensorrt, cuda, cpu; got {value!r}")
        return ",".join(names)

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return 0 if isinstance(value, str) and not value.strip() else value

    @field_validator("grpc_port")
    @classmethod
    def _not_the_http_port(cls, value: int, info: ValidationInfo) -> int:
        if value and value == info.data.get("port"):
            raise ValueError(f"{value} is the HTTP port (DETECTOR_PORT); the gRPC server needs a port of its own")
        return value

    @field_validator("api_keys")
    @classmethod
    def _long_enough_keys(cls, value: SecretStr) -> SecretStr:
        short = [key for key in _split(value.get_secret_value()) if len(key) < MIN_API_KEY_LENGTH]
        if short:
            # The value is a secret: say how many are short, never which.
            raise ValueError(f"{len(short)} key(s) shorter than {MIN_API_KEY_LENGTH} characters")
        return value

    @property
    def api_key_list(self) -> list[bytes]:
        return [key.encode() for key in _split(self.api_keys.get_secret_value())]

    @property
    def load_model_list(self) -> list[str] | None:
        """The models to load at start; None for every model in the repository."""
        names = _split(self.load_models)
        return None if "*" in names or not names else names

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @property
    def provider_list(self) -> list[Provider] | None:
        """The providers asked for, in order; None for 'auto'."""
        return None if self.providers == "auto" else [name for name in self.providers.split(",")]  # type: ignore[misc]


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class SettingsError(ValueError):
    """Bad settings, with every offending environment variable named."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides``); raises SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = [f"{ENV_PREFIX}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']} ({_shown(e)})" for e in error.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


def _shown(error: Any) -> str:
    # Secrets never reach a log or a terminal, not even in an error message.
    return "value hidden" if error["loc"][0] in SECRET_FIELDS else f"got {error.get('input')!r}"
