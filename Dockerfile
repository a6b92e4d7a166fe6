# syntax=docker/dockerfile:1
# The detection service, with the default model package built in.
#
#   docker build -t detector:gpu .                          NVIDIA GPU: onnxruntime-gpu (TensorRT, CUDA, CPU providers)
#   docker build -t detector:cpu --target runtime-cpu .     any x86-64 host: onnxruntime and OpenVINO (CPU)
#
# Stages: src (the source tree) -> runtime-cpu | runtime-gpu.
# The model is the committed, verified package models/default/package (model.onnx, its int8 graph, model.json
# and the files beside them), copied whole: no stage installs torch or reads the checkpoint (models/default/model.pt
# is kept out of the build context by .dockerignore). The runtime images hold the serving dependencies only:
# no torch, no compiler, no source tree.

# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9 (its [cuda] extra pins nvidia-cuda-runtime~=13.0).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---- src: the project's source tree, and nothing else ----
FROM scratch AS src
COPY pyproject.toml README.md /src/
COPY model_export/ /src/model_export/
COPY service/ /src/service/

# ---- runtime-cpu: python:3.11-slim, onnxruntime (CPU) and OpenVINO ----
FROM ${PYTHON_IMAGE} AS runtime-cpu
# serve: onnxruntime; openvino: DETECTOR_ENGINE=openvino, and an engine that DETECTOR_ENGINE=auto may choose on the CPU.
# --build-arg CPU_EXTRAS=serve gives an image without OpenVINO (about 100 MB smaller).
ARG CPU_EXTRAS=serve,openvino
# OpenVINO's wheel carries every device plugin and every model frontend (185 MB installed). The service reads ONNX
# graphs on the CPU device only, so it needs libopenvino, the CPU plugin and the ONNX frontend; these go: the GPU and
# NPU plugins (and the GPU plugin's kernel cache, cache.json), the TensorFlow, TensorFlow Lite, PaddlePaddle, PyTorch,
# JAX and GGUF frontends with their Python modules, and the C++ headers and CMake files (80 MB in all).
# They are removed in the RUN that installs them (a later RUN would leave them in the layer below), and every pattern
# must match: an OpenVINO that renames a file stops the build here instead of keeping it silently.
# tests/deploy/test_image.py checks the result: OpenVINO's only frontends are onnx and ir, none of these is left,
# and the service serves with DETECTOR_ENGINE=openvino.
ARG OPENVINO_UNUSED="libs/libopenvino_intel_gpu_plugin.so libs/cache.json libs/libopenvino_intel_npu_plugin.so \
libs/libopenvino_tensorflow_frontend.so.* libs/libopenvino_tensorflow_lite_frontend.so.* \
libs/libopenvino_paddle_frontend.so.* libs/libopenvino_pytorch_frontend.so.* libs/libopenvino_jax_frontend.so.* \
libs/libopenvino_gguf_frontend.so.* frontend/tensorflow frontend/paddle frontend/pytorch frontend/jax include cmake"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# The source is bind-mounted (rw: pip builds in the tree; the writes are thrown away), so it stays out of the image.
# pip and setuptools only install (22 MB): they leave the virtualenv once it is built.
# SC2086: the OPENVINO_UNUSED patterns are split and globbed on purpose.
# hadolint ignore=SC2086
RUN --mount=type=bind,from=src,source=/src,target=/src,rw \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install "/src[${CPU_EXTRAS}]" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && openvino="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/openvino" \
    && if [ -d "$openvino" ]; then \
        for unused in ${OPENVINO_UNUSED}; do \
            set -- "$openvino"/$unused; \
            [ -e "$1" ] || { echo "OPENVINO_UNUSED: nothing in $openvino matches $unused" >&2; exit 1; }; \
            rm -r "$@"; \
        done; \
    fi \
    && groupadd --system --gid 10001 detector \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin detector
COPY models/default/package/ /models/default/
# A volume mounted on /models/default replaces the built-in model.
ENV DETECTOR_MODEL_DIR=/models/default \
    DETECTOR_PROVIDERS=cpu \
    DETECTOR_HOST=0.0.0.0 \
    DETECTOR_PORT=8000
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECTOR_PORT', '8000') + '/health/ready', timeout=2)"]
# Exec form: python is PID 1 and gets SIGTERM itself (it turns unready, drains and exits 0).
# One server process per container and one container per GPU: batches are not split between processes.
CMD ["python", "-m", "service"]

# ---- runtime-gpu (the default target): the CUDA + cuDNN runtime, onnxruntime-gpu and TensorRT ----
FROM ${CUDA_IMAGE} AS runtime-gpu
# The GPU extras: onnxruntime-gpu, and TensorRT for its execution provider and for DETECTOR_ENGINE=tensorrt.
ARG GPU_EXTRAS=serve-gpu,tensorrt
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_PREFERENCE=only-managed \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# Python 3.11, as the project is tested with: a standalone build installed by uv (no PPA, no apt needed).
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=src,source=/src,target=/src,rw \
    uv venv --python 3.11 /opt/venv \
    && uv pip install --python /opt/venv/bin/python "/src[${GPU_EXTRAS}]" \
    && groupadd --system --gid 10001 detector \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin detector \
    && mkdir -p /var/cache/detector/trt \
    && chown -R 10001:10001 /var/cache/detector
# onnxruntime's TensorRT provider loads libnvinfer from where the TensorRT wheels put it.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/tensorrt_libs:${LD_LIBRARY_PATH}
COPY models/default/package/ /models/default/
# TensorRT engines built at start are cached here; mount a volume to keep them across restarts.
ENV DETECTOR_MODEL_DIR=/models/default \
    DETECTOR_PROVIDERS=auto \
    DETECTOR_TRT_CACHE_DIR=/var/cache/detector/trt \
    DETECTOR_HOST=0.0.0.0 \
    DETECTOR_PORT=8000
VOLUME ["/var/cache/detector/trt"]
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8001
# A first start on a new GPU builds TensorRT engines (minutes): a long start period.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECTOR_PORT', '8000') + '/health/ready', timeout=2)"]
CMD ["python", "-m", "service"]
