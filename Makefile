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

# `make demo` alone: the synthetic faces at a schedule that finishes in minutes, in runs/demo.
ifeq ($(MAKECMDGOALS),demo)
SCALE ?= 0.002
RUN ?= runs/demo
endif
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

# A settings file changes only when its settings do, so a changed setting
# re-runs exactly what depends on it. They are refreshed while this Makefile is
# read, and only when a pipeline target is asked for.
SOURCE ?= hdf5
BATCH ?=
HEADS ?= joint
# [interp] BatchNorm statistics of every stage's product: recomputed (default) or running (Caffe's raw).
BN_STATS ?= recomputed
BN_BATCHES ?= 60
# [interp] BatchNorm of the layers a step fixes: global (frozen whole, default) or batch.
FROZEN_BN_STAGE2 ?= global
FROZEN_BN_HEADS ?= global
data_settings := dataset=$(DATASET) data_root=$(DATA_ROOT) layout=$(LAYOUT) seed=$(SEED) opts=$(DATA_OPTS)
train_settings := layout=$(LAYOUT) scale=$(SCALE) seed=$(SEED) source=$(SOURCE) batch=$(BATCH) frozen_bn=$(FROZEN_BN_STAGE2),$(FROZEN_BN_HEADS)
bn_settings := bn_stats=$(BN_STATS) bn_batches=$(BN_BATCHES)
PIPELINE_GOALS := data stage1 weights-bm stage2 stage3 weights-wm heads assemble evaluate demo
define refresh_settings
$(shell mkdir -p $(RUN)/.settings && printf '%s\n' '$($(1)_settings)' | cmp -s - $(RUN)/.settings/$(1) \
  || printf '%s\n' '$($(1)_settings)' > $(RUN)/.settings/$(1))
endef
ifneq ($(filter $(PIPELINE_GOALS) $(RUN)/%,$(MAKECMDGOALS)),)
$(call refresh_settings,data)
$(call refresh_settings,train)
$(call refresh_settings,bn)
endif

# ---- data (SPEC 6): readers, augmentation, HDF5 + LMDB --------------------
DATA := $(RUN)/data/manifest.json
$(DATA): $(RUN)/.settings/data | $(SETUP_STAMP)
	$(PY) data_prep/prepare.py --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
	  --layout $(LAYOUT) --seed $(SEED) --workers $(WORKERS) --out $(RUN)/data --force $(DATA_OPTS)

data: $(DATA)

bench-data: | $(SETUP_STAMP)
	$(PY) data_prep/bench_augment.py

# ---- nets and solvers of the run (SPEC 2-5) ---------------------------------
NETS := $(RUN)/nets/.generated
$(NETS): $(RUN)/.settings/train | $(SETUP_STAMP)
	$(PY) tools/make_nets.py --run $(RUN) --layout $(LAYOUT) --scale $(SCALE) --seed $(SEED) --source $(SOURCE) $(if $(BATCH),--batch $(BATCH)) \
	  --frozen-bn-stage2 $(FROZEN_BN_STAGE2) --frozen-bn-heads $(FROZEN_BN_HEADS)
	@touch $@

# ---- Algorithm 1 ---------------------------------------------------------------
# Every stage ends with the BatchNorm statistics step (mcl/bnstats.py): Caffe's model
# is kept as models/<name>.raw.caffemodel beside the stage's product.
# A changed BN_STATS re-runs only that step where Caffe's model is still current.
STAGE_OPTS := --bn-stats $(BN_STATS) --bn-batches $(BN_BATCHES)
BN := $(RUN)/.settings/bn
M := $(RUN)/models
W := $(RUN)/weights
HEADS_OUT_joint := $(M)/heads.caffemodel
HEADS_OUT_separate := $(M)/heads_separate.json
HEADS_OUT := $(HEADS_OUT_$(HEADS))

# step 1: pre-train the basic model BM (u_j = 1)
$(M)/bm.caffemodel: $(DATA) $(NETS) $(BN)
	$(PY) tools/run_stage.py --run $(RUN) --stage stage1 --out $@ $(STAGE_OPTS)
# Eq. 5: weights from BM's validation errors
$(W)/bm_eq5.json: $(M)/bm.caffemodel
	$(PY) tools/compute_weights.py --run $(RUN) --model $< --eq 5 --out $@
# step 2: weighting fine-tuning with conv11..conv32 fixed
$(M)/stage2.caffemodel: $(M)/bm.caffemodel $(W)/bm_eq5.json $(BN)
	$(PY) tools/run_stage.py --run $(RUN) --stage stage2 --init $< --loss-weights $(W)/bm_eq5.json --out $@ $(STAGE_OPTS)
# step 3: weighting fine-tuning of all layers -> the weighting model WM
$(M)/wm.caffemodel: $(M)/stage2.caffemodel $(W)/bm_eq5.json $(BN)
	$(PY) tools/run_stage.py --run $(RUN) --stage stage3 --init $< --loss-weights $(W)/bm_eq5.json --out $@ $(STAGE_OPTS)
# Eq. 9: one weight vector per cluster from WM's validation errors
$(W)/wm_eq9.json: $(M)/wm.caffemodel
	$(PY) tools/compute_weights.py --run $(RUN) --model $< --eq 9 --out $@
# steps 4..3+m: multi-center fine-tuning of the heads (joint, or HEADS=separate)
$(HEADS_OUT): $(M)/wm.caffemodel $(W)/wm_eq9.json $(BN)
	$(PY) tools/run_stage.py --run $(RUN) --stage heads --init $< --loss-weights $(W)/wm_eq9.json \
	  $(if $(filter separate,$(HEADS)),--separate) --out $@ $(STAGE_OPTS)
# step 3+m+1: assemble the heads into one shape layer -> AM
$(M)/am.caffemodel: $(HEADS_OUT)
	$(PY) tools/assemble.py --run $(RUN) --heads $< --out $@
# evaluation of BM, WM and AM on the test split
$(RUN)/eval/test.json: $(M)/bm.caffemodel $(M)/wm.caffemodel $(M)/am.caffemodel
	$(PY) tools/evaluate.py --run $(RUN) --split test --model BM=models/bm.caffemodel \
	  --model WM=models/wm.caffemodel --model AM=models/am.caffemodel:models/am_deploy.prototxt

.PHONY: stage1 weights-bm stage2 stage3 weights-wm heads assemble evaluate
stage1: $(M)/bm.caffemodel
weights-bm: $(W)/bm_eq5.json
stage2: $(M)/stage2.caffemodel
stage3: $(M)/wm.caffemodel
weights-wm: $(W)/wm_eq9.json
heads: $(HEADS_OUT)
assemble: $(M)/am.caffemodel
evaluate: $(RUN)/eval/test.json

# ---- porting the model out of Caffe (docs/PORT.md) ------------------------------
# Defaults: the run's AM. `make port` never trains: without the model it says so.
PROTOTXT ?= $(M)/am_deploy.prototxt
CAFFEMODEL ?= $(M)/am.caffemodel
OUT ?= $(RUN)/port
PORT_OPTS ?=
BENCH_PORT_OPTS ?=
PORT_ONNX := $(OUT)/$(basename $(notdir $(CAFFEMODEL))).onnx

$(PORT_ONNX): $(wildcard $(PROTOTXT) $(CAFFEMODEL)) | $(SETUP_STAMP)
	@test -f $(PROTOTXT) -a -f $(CAFFEMODEL) || { echo "port: $(PROTOTXT) or $(CAFFEMODEL) missing" \
	  "(make assemble first, or give PROTOTXT= CAFFEMODEL=)" >&2; exit 2; }
	$(PY) tools/port.py export --prototxt $(PROTOTXT) --caffemodel $(CAFFEMODEL) --out $(OUT) \
	  $(if $(wildcard $(RUN)/data/manifest.json),--run $(RUN)) $(PORT_OPTS)

port: $(PORT_ONNX)

bench-port: | $(SETUP_STAMP)
	$(PY) tools/bench_port.py $(if $(wildcard $(M)/am.caffemodel),--run $(RUN)) $(BENCH_PORT_OPTS)

.PHONY: port bench-port

# ---- the committed reference nets, diagrams, benchmarks -----------------------
nets: | $(SETUP_STAMP)
	$(PY) tools/make_nets.py --out .

diagrams: | $(SETUP_STAMP)
	$(PY) tools/draw_nets.py --out docs/img

bench-nets: | $(SETUP_STAMP)
	$(PY) tools/bench_nets.py

demo: evaluate
	@echo "demo done: $(RUN)/eval/test.md (report), $(RUN)/eval/test_ced.png (CED), $(RUN)/manifest.json"

clean-run:
	rm -rf $(RUN)
