# lungnet: every target sets up its own virtual environment first (Python 3.11+, nothing else needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= lidc-phantom
PROFILE ?= default
SET ?=
SET_ARGS = $(foreach assignment,$(SET),--set $(assignment))
SEED ?=
SEED_ARGS = $(if $(SEED),--seed $(SEED))
SEEDS ?= 0 5 10
STUDY ?= binary-nodule
SPREAD = runs/spread/$(STUDY)-$(PROFILE)
# Keep TensorFlow's C++ start-up chatter out of the logs.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help setup test test-slow test-all lint format duplicates bench data-info clean \
	reproduce-binary-nodule reproduce-binary-full reproduce-5class-nodule reproduce-5class-full reproduce-classification-all \
	reproduce-attention-unet reproduce-semi-infnet reproduce-segmentation-zoo reproduce-nodule-hyperfusion seed-spread bench-segmentation bench-pipelines bench-gpu bench-serving bench-monai \
	bench-test-suite bench-autotune

help:
	@echo "make reproduce-binary-nodule   flagship study (DATA=lidc-phantom by default, or a manifest CSV)"
	@echo "  (also reproduce-binary-full, reproduce-5class-nodule, reproduce-5class-full, reproduce-classification-all;"
	@echo "   PROFILE=full for the study's own settings, PROFILE=cpu-real-folds for real CT on a CPU;"
	@echo "   SET=\"data.grouping=exclude-indeterminate ...\" passes --set KEY=VALUE overrides)"
	@echo "make reproduce-attention-unet  segmentation study: U-Net vs attention residual U-Net, Dice+Focal, dense CRF"
	@echo "  (PROFILE=cpu-real-augmented DATA=../shared/data/lidc-crops for real CT on a CPU)"
	@echo "make reproduce-semi-infnet     Inf-Net study: Inf-Net, Semi-Inf-Net, U-Net, radiomics SVMs (SET=labels.fraction=0.1)"
	@echo "make reproduce-segmentation-zoo multi-dataset study's zoo: UNAR, Res34UNetV2, UNet++, DeepLabV3+, SegFormer, LightUNet, U-Net"
	@echo "make reproduce-nodule-hyperfusion multi-dataset study's classifier: NoduleHyperFusionNet on readers' then segmenter's masks"
	@echo "  (SEED=N sets every training seed of a reproduce-* run; the split stays)"
	@echo "make seed-spread STUDY=binary-nodule SEEDS=\"0 5 10\"  the study once per seed, then lungnet compare-runs (PAIR=\"A B\": A − B per run)"
	@echo "make test                      fast tests + notebooks (sets up .venv)"
	@echo "make test-slow                 the slow tests"
	@echo "make bench                     benchmarks -> benchmarks/results/*.json"
	@echo "make bench-pipelines           each study's training pipeline: images/s, CPU ms per image"
	@echo "make bench-serving RUNS=\"RUN ...\" latency and throughput of exported models"
	@echo "make bench-monai               lungnet's U-Net step against MONAI's (PyTorch), as a ratio"
	@echo "make bench-test-suite          the disk make test needs at its peak and leaves behind"
	@echo "make bench-autotune            training with tf.data autotuning on and off (real crops)"
	@echo "make lint | format             ruff"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check lungnet tests benchmarks
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile --durations=25 --nbmake notebooks tests

test-slow: $(STAMP)
	$(PY) -m pytest -m slow tests

test-all: test test-slow

lint: $(STAMP)
	$(VENV)/bin/ruff check lungnet tests benchmarks
	$(VENV)/bin/ruff format --check lungnet tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix lungnet tests benchmarks
	$(VENV)/bin/ruff format lungnet tests benchmarks

duplicates:
	duplicates --repo lungnet --most 20

bench: $(STAMP)
	$(PY) benchmarks/phantom_build.py
	$(PY) benchmarks/pipeline_throughput.py
	$(PY) benchmarks/segmentation_speed.py
	$(PY) benchmarks/tracing_overhead.py
	$(PY) benchmarks/study_pipelines.py
	$(PY) benchmarks/augment_stages.py

# Each study's training pipeline (its `full` profile) on 1 and 2 cores: images/s, CPU ms per image, and the
# cores it needs to feed the GPU rates of benchmarks/results/gpu_training_jax.json when that file is there.
bench-pipelines: $(STAMP)
	$(PY) benchmarks/study_pipelines.py $(ARGS)

bench-segmentation: $(STAMP)
	$(PY) benchmarks/segmentation_speed.py

# Training (lungnet's fit path, the cpu-real custom CNN and U-Net on ../shared/data/lidc-crops) with tf.data
# autotuning on and off, alternating: wall time, CPU time and the idle share of each run (about 25 minutes).
bench-autotune: $(STAMP)
	$(PY) benchmarks/autotune_training.py $(ARGS)

# The disk `make test` needs at its peak and what it leaves behind (its own TMPDIR, sampled every 2 s): as long
# as the suite itself; ARGS="-- COMMAND ..." measures another command.
bench-test-suite: $(STAMP)
	$(PY) benchmarks/suite_footprint.py $(ARGS)

# Latency (batch 1, p50 / p99) and throughput (batch 32) of exported models, in-process: RUNS="RUN ..."
# (default: the smoke runs of the classification and segmentation studies)
bench-serving: $(STAMP)
	$(PY) benchmarks/serving_latency.py $(RUNS)

# Training images/s of every family, float32 / mixed float16 / mixed bfloat16 (KERAS_BACKEND=jax on a GPU
# machine without TensorFlow: python benchmarks/gpu_training.py needs only Keras, NumPy and lungnet/models).
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu_training.py

# lungnet's U-Net training step against MONAI's BasicUNet of the same shape (PyTorch), as a ratio; installs
# its own requirements (a CPU PyTorch and MONAI) into the venv first. ARGS="--mixed" on a GPU.
bench-monai: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements-monai.txt
	$(PY) benchmarks/monai_comparison.py $(ARGS)

data-info: $(STAMP)
	$(VENV)/bin/lungnet data info $(DATA)

reproduce-binary-nodule: $(STAMP)
	$(VENV)/bin/lungnet reproduce binary-nodule --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

reproduce-binary-full: $(STAMP)
	$(VENV)/bin/lungnet reproduce binary-full --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

reproduce-5class-nodule: $(STAMP)
	$(VENV)/bin/lungnet reproduce five-class-nodule --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

reproduce-5class-full: $(STAMP)
	$(VENV)/bin/lungnet reproduce five-class-full --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

# All twelve cells of the study's table: 3 models x {binary, 5-class} x {nodule crop, full slice}.
reproduce-classification-all: reproduce-binary-nodule reproduce-binary-full reproduce-5class-nodule reproduce-5class-full

reproduce-attention-unet: $(STAMP)
	$(VENV)/bin/lungnet reproduce attention-unet --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

# Inf-Net, Semi-Inf-Net (pseudo-label rounds), U-Net and radiomics SVMs at a label budget (labels.fraction).
reproduce-semi-infnet: $(STAMP)
	$(VENV)/bin/lungnet reproduce inf-net --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

# The multi-dataset study's segmentation zoo (leaderboard, curves, overlays). Harmonise collections first with
# `lungnet data harmonize luna16:ROOT msd-lung:ROOT ... --out DIR`, then DATA=DIR.
reproduce-segmentation-zoo: $(STAMP)
	$(VENV)/bin/lungnet reproduce segmentation-zoo --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

# The multi-dataset study's classification half: NoduleHyperFusionNet on seven nodule channels, trained on the
# readers' masks then on those of a segmenter trained on the run's training patients; judged image-only.
reproduce-nodule-hyperfusion: $(STAMP)
	$(VENV)/bin/lungnet reproduce nodule-hyperfusion --data $(DATA) --profile $(PROFILE) $(SET_ARGS) $(SEED_ARGS)

# How much of a result is the seed: STUDY (a `lungnet reproduce` name) once per seed of SEEDS, with DATA,
# PROFILE and SET, into runs/spread/<study>-<profile>/seed-<S> (a finished one is kept, so an interrupted sweep
# goes on where it stopped), then `lungnet compare-runs` over them into runs/spread/<study>-<profile>/;
# PAIR="A B" adds the difference between two of the study's models within each run.
seed-spread: $(STAMP)
	@for seed in $(SEEDS); do \
	  if grep -qs '"status": "finished"' $(SPREAD)/seed-$$seed/run.json; then \
	    echo "seed $$seed: finished before, kept ($(SPREAD)/seed-$$seed)"; continue; fi; \
	  $(VENV)/bin/lungnet reproduce $(STUDY) --data $(DATA) --profile $(PROFILE) $(SET_ARGS) --seed $$seed \
	    --out $(SPREAD)/seed-$$seed || exit 1; \
	done
	$(VENV)/bin/lungnet compare-runs $(foreach seed,$(SEEDS),$(SPREAD)/seed-$(seed)) --out $(SPREAD) $(if $(PAIR),--pair $(PAIR))

clean:
	rm -rf runs .pytest_cache .ruff_cache
