# Set-up and everyday commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint demo default-model bench soak deploy-tools image-test browser-test page-screenshot mutants gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision first, pinned, so that no other package pulls a different build.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[serve,openvino,export,dev]"
	touch $(STAMP)

setup: $(STAMP)

DEPLOY_TOOLS := $(VENV)/.deploy-tools

# Validators for tests/deploy: Debian's prometheus (promtool), hadolint, kubernetes-validate, the Compose schema.
$(DEPLOY_TOOLS): deploy/install-test-tools.sh $(STAMP)
	deploy/install-test-tools.sh $(VENV)
	touch $(DEPLOY_TOOLS)

deploy-tools: $(DEPLOY_TOOLS)

IMAGE_TOOLS := $(VENV)/.image-tools

# Podman, buildah and podman-compose for the image tests, where no Docker engine answers.
$(IMAGE_TOOLS): deploy/install-image-tools.sh deploy/install-common.sh $(STAMP)
	deploy/install-image-tools.sh $(VENV)
	touch $(IMAGE_TOOLS)

BROWSER_TOOLS := $(VENV)/.browser-tools

# Debian's chromium and chromium-driver, and selenium, for the page's browser tests.
$(BROWSER_TOOLS): deploy/install-browser-tools.sh deploy/install-common.sh $(STAMP)
	deploy/install-browser-tools.sh $(VENV)
	touch $(BROWSER_TOOLS)

# The service on the embedded default model, on port 8000 (DETECTOR_* variables configure it).
serve: $(STAMP)
	$(BIN)/python -m service

demo: $(STAMP)
	$(BIN)/python -m model_export synth --out runs/demo-data --count 50 --seed 12345
	$(BIN)/python -m model_export evaluate --data runs/demo-data --checkpoint models/default/model.pt --json runs/demo-eval.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases tests/mutants.py tests/deploy/containers.py tests/deploy/test_image.py

# Everything: lint, the suite with the image tests (tests/deploy/test_image.py: about 5 minutes, 7 to 10 on a fresh
# machine), then the mutants (the suite's own check).
test: lint $(DEPLOY_TOOLS) $(IMAGE_TOOLS) $(BROWSER_TOOLS)
	$(BIN)/pytest
	$(BIN)/python -m tests.mutants

# Each deliberate bug in tests/mutants.py, put into a temporary copy of the tree, must fail the tests that promise
# its behaviour; the same tests must pass on an unmutated copy first (3 to 6 minutes on 2 CPU cores).
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants

# Only the image tests: builds the CPU image and runs it, then compose's cpu profile with Prometheus.
# Docker where an engine answers, else Podman; with CI set, a missing container engine fails instead of skipping.
image-test: $(STAMP) $(IMAGE_TOOLS)
	$(BIN)/pytest -m image tests/deploy/test_image.py

# The page at / in headless Chromium; with CI set, a missing browser fails instead of skipping.
browser-test: $(STAMP) $(BROWSER_TOOLS)
	$(BIN)/pytest -m browser tests/service/test_page.py

# docs/page.png, the README's screenshot of the page on the default model.
page-screenshot: $(STAMP) $(BROWSER_TOOLS)
	$(BIN)/python -m docs.screenshot docs/page.png

# The soak test for longer than CI's 3 minutes: `make soak` (30 minutes) or `make soak SOAK_SECONDS=7200`.
SOAK_SECONDS ?= 1800
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -q -p no:cacheprovider --timeout=0 tests/service/test_soak.py

# Reproduces the embedded default model (about 80 minutes on 2 CPU cores); see models/default/README.md.
default-model: $(STAMP)
	$(BIN)/python -m model_export synth --out data/train --count 5000 --seed 1
	$(BIN)/python -m model_export synth --out data/val --count 300 --seed 2
	$(BIN)/python -m model_export synth --out data/test --count 500 --seed 3
	$(BIN)/python -m model_export synth --out data/photo-test --count 300 --seed 21 --held-out-photos --empty-fraction 0
	$(BIN)/python -m model_export synth --out data/photo-negatives --count 200 --seed 22 --held-out-photos --photos-only
	$(BIN)/python -m model_export train --data data/train --val data/val --out runs/default/model.pt --epochs 11 --seed 0 --bf16
	cp runs/default/model.pt models/default/model.pt
	cp runs/default/model.loss.png models/default/loss.png
	$(BIN)/python -m model_export evaluate --data data/test --checkpoint models/default/model.pt --json models/default/eval.json --plot models/default/pr.png
	$(BIN)/python -m model_export evaluate --data data/photo-test --negatives data/photo-negatives --checkpoint models/default/model.pt \
		--json models/default/eval-photos.json --plot models/default/pr-photos.png --grid models/default/photos.png
	$(BIN)/python -m model_export export --checkpoint models/default/model.pt --out models/default/package --name default --version 1
	$(BIN)/python -m model_export synth --out data/calibration --count 200 --seed 11
	$(BIN)/python -m model_export synth --out data/int8-val --count 100 --seed 12
	$(BIN)/python -m model_export quantize --package models/default/package --calibration data/calibration --val data/int8-val

# Benchmarks (not tests): the service vs the raw engine vs a naive eager server, and the exported graph vs the eager model,
# into bench/results/ (one report), and each engine and precision side by side (precisions). Run on an otherwise idle
# machine: about 8 minutes on 2 CPU cores (at most 17);
# `python -m bench --quick` checks it in 2, `python -m bench --only SECTION` measures one section into the report.
bench: $(STAMP)
	$(BIN)/python -m bench

# On a GPU host: the GPU extras into .venv, an fp16 TensorRT engine of the default model, the gpu-marked tests and a short
# GPU benchmark into bench/results/gpu/ (held to 8 minutes after setup). Stops at once, saying why, where there is no GPU.
gpu-check:
	@$(PYTHON) -m service.gpu || { echo "make gpu-check: needs a host with an NVIDIA GPU and its driver" >&2; exit 2; }
	$(MAKE) setup
	bench/gpu-check.sh $(VENV)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
