# MCL-Caffe: the pipeline's map. Every stage is a target that produces files
# under $(RUN); its prerequisites are the files it reads.
#
#   make demo        the whole job on the built-in synthetic faces
#   make test        the test suite
#   make setup       install everything (runs by itself before any other target)
#
# Variables: DATASET (synth|ibug|cofw|mtfl|generic), DATA_ROOT, LAYOUT (5|29|68),
# SCALE (schedule scale), SEED, RUN (output folder), WORKERS.

SHELL := /bin/bash
PY := .venv/bin/python
SETUP_STAMP := .venv/.mcl-setup.stamp

DATASET ?= synth
DATA_ROOT ?=
SEED ?= 0
SCALE ?= 0.01
WORKERS ?= 2
layout_synth := 68
layout_ibug := 68
layout_cofw := 29
layout_mtfl := 5
LAYOUT ?= $(layout_$(DATASET))
RUN ?= runs/$(DATASET)-$(LAYOUT)
DATA_OPTS ?=

.PHONY: setup test demo data bench-data bench-nets nets diagrams clean-run

setup:
	bash scripts/setup.sh

$(SETUP_STAMP): scripts/setup.sh requirements.txt $(wildcard patches/*.patch)
	bash scripts/setup.sh

test: | $(SETUP_STAMP)
	$(PY) -m pytest

# ---- data (SPEC 6): readers, augmentation, HDF5 + LMDB --------------------
$(RUN)/data/manifest.json: | $(SETUP_STAMP)
	$(PY) data_prep/prepare.py --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
	  --layout $(LAYOUT) --seed $(SEED) --workers $(WORKERS) --out $(RUN)/data $(DATA_OPTS)

data: $(RUN)/data/manifest.json

bench-data: | $(SETUP_STAMP)
	$(PY) data_prep/bench_augment.py

# ---- nets and solvers (SPEC 2-5) ------------------------------------------
nets: | $(SETUP_STAMP)
	$(PY) tools/make_nets.py --out .

diagrams: | $(SETUP_STAMP)
	$(PY) tools/draw_nets.py --out docs/img

bench-nets: | $(SETUP_STAMP)
	$(PY) tools/bench_nets.py

demo: data

clean-run:
	rm -rf $(RUN)
