# MCL-Caffe: the pipeline's map. Every stage is a target that produces files
# under $(RUN); its prerequisites are the files it reads.
#
#   make demo        the whole job on the built-in synthetic faces
#   make test        the test suite
#   make setup       install everything (runs by itself before any other target)
#
# Variables: DATASET (synth|ibug|cofw|mtfl|generic), DATA_ROOT, LAYOUT (5|29|68),
# SCALE (schedule scale), SEED, RUN (output folder), WORKERS, ENGINE (caffe|torch), DEVICE (cpu|cuda),
# PRECISION (fp32|bf16: the torch engine's bfloat16 training, opt-in, docs/ENGINE.md);
# the sweep's SEEDS, DATASETS, SWEEP; launchers LAUNCH_TRAIN and LAUNCH (docs/CLUSTER.md).

SHELL := /bin/bash
PY := .venv/bin/python
SETUP_STAMP := .venv/.mcl-setup.stamp

# `make demo` alone: the synthetic faces on the demo's own schedule (mcl/method/stages.py SCHEDULES),
# in runs/demo, with the audit's equal-budget control and occlusion test.
ifeq ($(MAKECMDGOALS),demo)
SCHEDULE ?= demo
# Training in the torch engine (proven equal to Caffe, tests/test_engine.py) fits the demo's
# schedule in its 20 minutes; `make demo ENGINE=caffe` trains in Caffe. Everything else runs in Caffe.
ENGINE ?= torch
RUN ?= runs/demo
AUDIT_PARTS ?= equal_budget occlusion
endif
# `make paper DATASET=mtfl DATA_ROOT=...`: the paper's experiment on real faces at the CPU schedule `real`
# (docs/REAL_DATA.md), in runs/paper-<dataset>, keeping the snapshots for the learning curve.
ifneq ($(filter paper,$(MAKECMDGOALS)),)
SCHEDULE ?= real
KEEP_SNAPSHOTS ?= on
RUN ?= runs/paper-$(DATASET)
endif
SCHEDULE ?= paper
DATASET ?= synth
DATA_ROOT ?=
SEED ?= 0
SCALE ?= 0.01
WORKERS ?= 2
# layout_<dataset> := N for every dataset, from the dataset table (mcl/method/datasets.py, standard library
# only: before `make setup` the system's python3 reads it).
$(foreach line,$(shell $(if $(wildcard $(PY)),$(PY),python3) -m mcl.method.datasets --make | tr -d ' '),$(eval $(line)))
LAYOUT ?= $(layout_$(DATASET))
RUN ?= runs/$(DATASET)-$(LAYOUT)
DATA_OPTS ?=

.PHONY: setup test demo data bench-data bench-nets nets diagrams clean-run help

setup:
	bash scripts/setup.sh

$(SETUP_STAMP): scripts/setup.sh requirements.txt $(wildcard patches/*.patch)
	bash scripts/setup.sh

test: | $(SETUP_STAMP)
	$(PY) -m pytest

# Algorithm 1 as the stage table says it (mcl/method/stages.py), with the targets that run it.
help: | $(SETUP_STAMP)
	@$(PY) -m mcl.method.stages
	@echo; echo "targets: setup test demo clean-run (docs/SETUP.md, docs/TESTS.md)"
	@echo "         data stage1 weights-bm stage2 stage3 weights-wm heads assemble evaluate audit verify port"
	@echo "         bench-engine bench-threads bench-candidates bench-nets bench-data (docs/BENCHMARKS.md, docs/ENGINE.md), gpu-check (docs/GPU.md)"
	@echo "         sweep (docs/CLUSTER.md), audit-model (docs/METHOD_PYTORCH.md), peers setup-peers bench-port bench-detect (docs/PORT.md)"
	@echo "         paper: the paper's experiment on real faces, beside its table (docs/REAL_DATA.md)"
	@echo "         models: the in-box models tools/predict.py uses without --model, from the paper runs (models/)"
	@echo; echo "training variables (all at the head of the Makefile): ENGINE=caffe|torch DEVICE=cpu|cuda TF32=off|on"
	@echo "         DETERMINISTIC=on|off PRECISION=fp32|bf16 (the torch engine's opt-in bfloat16 training, docs/ENGINE.md)"

AUDIT_TARGETS := pre_bm perturbation single_head simplified_am weighting_simplified_am occlusion equal_budget
SOURCE ?= hdf5
BATCH ?=
HEADS ?= joint
# [interp] BatchNorm statistics of every stage's product: recomputed (default) or running (Caffe's raw).
BN_STATS ?= recomputed
BN_BATCHES ?= 60
# [interp] METHOD §5.5's optional warm-up before step 1 (mcl/method/stages.py; METHOD §12.7): off (default) or on.
WARMUP ?= off
# [interp] BatchNorm of the layers a step fixes: global (frozen whole, default) or batch.
FROZEN_BN_STAGE2 ?= global
FROZEN_BN_HEADS ?= global
# Training engine: caffe (the reference) or torch (the same nets and solvers in PyTorch with
# Caffe's numerics, mcl/engine), on DEVICE cpu or cuda (torch only). Real data trains in the torch
# engine by default (3-4x faster on the CPU, tests/test_engine.py proves it equal); ENGINE=caffe trains in Caffe.
ENGINE ?= $(if $(filter synth,$(DATASET)),caffe,torch)
# KEEP_SNAPSHOTS=on keeps every tenth of each stage's model for the learning curve (tools/learning_curve.py
# --snapshots); it changes no product, so it is no setting of the run.
KEEP_SNAPSHOTS ?= off
DEVICE ?= cpu
# Torch engine on cuda (docs/GPU.md): TF32 off (full float32, the default) or on; deterministic
# algorithms on (the default: two runs, and a resumed run, give the same bits) or off (cuDNN autotunes).
TF32 ?= off
DETERMINISTIC ?= on
# Torch engine: fp32 (the default) or bf16, bfloat16 autocast (convolutions and matrix products in bfloat16;
# weights, update, BatchNorm statistics and losses in float32), refused where the device has no bfloat16 and
# with ENGINE=caffe (docs/ENGINE.md). Part of the train settings: changing it trains again.
PRECISION ?= fp32
# Make's record of the settings, one file per group under RUN/.settings/: a group's file changes
# only when its settings do, so a changed setting re-runs exactly what depends on it.
# nets: what the generated nets and solvers depend on (RUN/run.json holds them as data);
# train: what every stage is trained with, not the nets (the engine, the precision, the warm-up); DEVICE, TF32 and
# DETERMINISTIC are not in it: a finished stage is kept, recorded as it was trained (docs/GPU.md);
# bn: the statistics step of every stage.
data_settings := dataset=$(DATASET) data_root=$(DATA_ROOT) layout=$(LAYOUT) seed=$(SEED) opts=$(DATA_OPTS)
nets_settings := layout=$(LAYOUT) scale=$(SCALE) schedule=$(SCHEDULE) seed=$(SEED) source=$(SOURCE) batch=$(BATCH) frozen_bn=$(FROZEN_BN_STAGE2),$(FROZEN_BN_HEADS)
# (precision only where it is not fp32: a run made before PRECISION existed keeps its record)
train_settings := warmup=$(WARMUP) engine=$(ENGINE)$(if $(filter-out fp32,$(PRECISION)), precision=$(PRECISION))
bn_settings := bn_stats=$(BN_STATS) bn_batches=$(BN_BATCHES)
SETTINGS_GROUPS := data nets train bn
PIPELINE_GOALS := data stage1 weights-bm stage2 stage3 weights-wm heads assemble evaluate demo \
  audit $(AUDIT_TARGETS) audit-models audit-model paper
# Each group's record is written by the rule `$(RUN)/.settings/%` below, when its settings differ
# from the record; a dry run or a question (`make -n`, `make -q`) writes nothing.
DRY_RUN := $(strip $(foreach f,n q,$(findstring $(f),$(firstword -$(MAKEFLAGS)))))
ifneq ($(filter $(PIPELINE_GOALS) $(RUN)/%,$(MAKECMDGOALS)),)
# A run made before RUN/loss_weights/ had its name is refused with the command that renames it.
ifneq ($(wildcard $(RUN)/weights/*.json),)
ifeq ($(wildcard $(RUN)/loss_weights),)
$(error $(RUN)/weights/ holds loss-weight files of an earlier version, which this one keeps in \
  $(RUN)/loss_weights/: rename the folder (mv $(RUN)/weights $(RUN)/loss_weights) and run make again)
endif
endif
ifeq ($(DRY_RUN),)
# One writer per run folder: this make holds RUN/.lock until it ends (its recipes share it); a
# second make, or a tool by hand, on the same folder stops at once naming this one (mcl/records/lock.py).
# mcl/records/lock.py needs the standard library only: before `make setup` the system's python3 runs it.
ifeq ($(filter $(abspath $(RUN)),$(subst :, ,$(MCL_RUN_LOCK))),)
lock_message := $(shell $(if $(wildcard $(PY)),$(PY),python3) -m mcl.records.lock hold $(RUN) --for $$PPID 2>&1)
ifneq ($(.SHELLSTATUS),0)
$(error $(lock_message))
endif
export MCL_RUN_LOCK := $(abspath $(RUN))
endif
# Before make plans: a product whose bytes are not those its manifest recorded (torn by a crash
# after its rename) is set aside as <name>.torn, so its rule runs again (mcl/records/verify.py).
ifneq ($(wildcard $(PY)),)
ifneq ($(wildcard $(RUN)/manifest.json $(RUN)/data/manifest.json),)
torn_check := $(shell $(PY) -m mcl.records.verify --set-aside-torn $(RUN) >&2)
endif
endif
endif
# Compared only, never written while this Makefile is read: a group whose settings changed is remade
# by the rule below just before the first recipe that needs it (so a failed `make data` leaves no record
# of settings nothing was made with), and a dry run shows it remade, with all it reruns.
changed_settings := $(foreach g,$(SETTINGS_GROUPS),$(if $(shell printf '%s\n' '$($(g)_settings)' \
  | cmp -s - $(RUN)/.settings/$(g) 2>/dev/null || echo changed),$(g)))
$(foreach g,$(changed_settings),$(eval $(RUN)/.settings/$(g): FORCE))
endif
$(RUN)/.settings/%:
	@mkdir -p $(@D) && printf '%s\n' '$($*_settings)' > $@
.PHONY: FORCE
FORCE:

# ---- where recipes run (docs/CLUSTER.md) --------------------------------------
# Empty (the default): here. Otherwise a launcher prefix, e.g. LAUNCH_TRAIN="srun -c4 --gres=gpu:1"
# for every training recipe and LAUNCH="srun -c2" for the rest (data, weights, evaluation, reports).
# mcl/run/launch.py runs it so that an interrupted make cancels the job, and names a failed one.
LAUNCH ?=
LAUNCH_TRAIN ?=
launcher = $(if $(strip $(1)),$(PY) -m mcl.run.launch --run $(RUN) --target $@ -- $(1)) $(PY)
TRAIN = $(call launcher,$(LAUNCH_TRAIN))
LIGHT = $(call launcher,$(LAUNCH))

# ---- data (METHOD §6): readers, augmentation, HDF5 + LMDB -----------------
DATA := $(RUN)/data/manifest.json
$(DATA): $(RUN)/.settings/data | $(SETUP_STAMP)
	$(LIGHT) data_prep/prepare.py --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
	  --layout $(LAYOUT) --seed $(SEED) --workers $(WORKERS) --out $(RUN)/data --force $(DATA_OPTS) \
	  || { s=$$?; rm -f $(RUN)/.settings/data; rmdir $(RUN)/.settings 2>/dev/null; exit $$s; }

data: $(DATA)

bench-data: | $(SETUP_STAMP)
	$(PY) data_prep/bench_augment.py

# ---- nets and solvers of the run (METHOD §2-5) ------------------------------
NETS := $(RUN)/nets/.generated
$(NETS): $(RUN)/.settings/nets | $(SETUP_STAMP)
	$(LIGHT) tools/make_nets.py --run $(RUN) --layout $(LAYOUT) --scale $(SCALE) --schedule $(SCHEDULE) --seed $(SEED) --source $(SOURCE) $(if $(BATCH),--batch $(BATCH)) \
	  --frozen-bn-stage2 $(FROZEN_BN_STAGE2) --frozen-bn-heads $(FROZEN_BN_HEADS)
	@touch $@

# ---- Algorithm 1 ---------------------------------------------------------------
# Every stage ends with the BatchNorm statistics step (mcl/caffe/bnstats.py): Caffe's model
# is kept as models/<name>.raw.caffemodel beside the stage's product.
# A changed BN_STATS re-runs only that step where Caffe's model is still current.
STAGE_OPTS := --bn-stats $(BN_STATS) --bn-batches $(BN_BATCHES) --engine $(ENGINE) --device $(DEVICE) \
  --tf32 $(TF32) --deterministic $(DETERMINISTIC) --precision $(PRECISION) \
  $(if $(filter on,$(KEEP_SNAPSHOTS)),--keep-snapshots)
# What every stage's recipe depends on beside its inputs: its training and statistics settings.
BN := $(RUN)/.settings/train $(RUN)/.settings/bn
M := $(RUN)/models
# The u_j of Eq. 5 and Eq. 9 (loss weights, not model weights).
W := $(RUN)/loss_weights
HEADS_OUT_joint := $(M)/heads.caffemodel
HEADS_OUT_separate := $(M)/heads_separate.json
HEADS_OUT := $(HEADS_OUT_$(HEADS))

# step 1: pre-train the basic model BM (u_j = 1)
$(M)/bm.caffemodel: $(DATA) $(NETS) $(BN) $(if $(filter on,$(WARMUP)),$(M)/warmup.caffemodel)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage1 --out $@ $(STAGE_OPTS) $(if $(filter on,$(WARMUP)),--warmup)
# the optional warm-up (WARMUP=on): lr 0.002 for 5% of step 1, which resumes from its solverstate
$(M)/warmup.caffemodel: $(DATA) $(NETS) $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage warmup --out $@ $(STAGE_OPTS)
# Eq. 5: weights from BM's validation errors
$(W)/bm_eq5.json: $(M)/bm.caffemodel
	$(LIGHT) tools/compute_weights.py --run $(RUN) --model $< --eq 5 --out $@
# step 2: weighting fine-tuning with conv11..conv32 fixed
$(M)/stage2.caffemodel: $(M)/bm.caffemodel $(W)/bm_eq5.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage2 --init $< --loss-weights $(W)/bm_eq5.json --out $@ $(STAGE_OPTS)
# step 3: weighting fine-tuning of all layers -> the weighting model WM
$(M)/wm.caffemodel: $(M)/stage2.caffemodel $(W)/bm_eq5.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage3 --init $< --loss-weights $(W)/bm_eq5.json --out $@ $(STAGE_OPTS)
# Eq. 9: one weight vector per cluster from WM's validation errors
$(W)/wm_eq9.json: $(M)/wm.caffemodel
	$(LIGHT) tools/compute_weights.py --run $(RUN) --model $< --eq 9 --out $@
# steps 4..3+m: multi-center fine-tuning of the heads (joint, or HEADS=separate)
$(HEADS_OUT): $(M)/wm.caffemodel $(W)/wm_eq9.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage heads --init $< --loss-weights $(W)/wm_eq9.json \
	  $(if $(filter separate,$(HEADS)),--separate) --out $@ $(STAGE_OPTS)
# step 3+m+1: assemble the heads into one shape layer -> AM
$(M)/am.caffemodel: $(HEADS_OUT)
	$(LIGHT) tools/assemble.py --run $(RUN) --heads $< --out $@
# evaluation of BM, WM and AM on the test split
$(RUN)/eval/test.json: $(M)/bm.caffemodel $(M)/wm.caffemodel $(M)/am.caffemodel
	$(LIGHT) tools/evaluate.py --run $(RUN) --split test --model BM=models/bm.caffemodel \
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

# ---- the audit (METHOD §10): every ablation of the paper, each its own target ---------
# Ablation stages train on named copies of a stage's net and solver (run_stage.py --name),
# so `make -j2 audit` can run them side by side with their own weights and snapshots.
A := $(RUN)/audit
AM_ := $(A)/models
AUDIT = $(LIGHT) tools/audit.py
PERT_DELTAS := 0.1 0.2 0.3 0.4

# BM, WM and AM as Caffe left their statistics: AM from the raw heads.
$(AM_)/am_running.caffemodel: $(HEADS_OUT)
	$(LIGHT) tools/assemble.py --run $(RUN) --heads $(M)/heads.raw.caffemodel --out $@
$(A)/models.json: $(M)/bm.caffemodel $(M)/wm.caffemodel $(M)/am.caffemodel $(AM_)/am_running.caffemodel
	$(AUDIT) models --run $(RUN) --out $@
# pre-BM (Section IV-C-1): trained like BM
$(M)/pre_bm.caffemodel: $(DATA) $(NETS) $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage pre_bm --out $@ $(STAGE_OPTS)
$(A)/pre_bm.json: $(M)/pre_bm.caffemodel $(M)/bm.caffemodel
	$(AUDIT) ablation pre_bm --run $(RUN) --out $@
# weight perturbation (Section IV-C-2): stages 2 and 3 from BM with perturbed Eq. 5 weights
$(W)/pert_%_eq5.json: $(W)/bm_eq5.json
	$(AUDIT) perturb --run $(RUN) --weights $< --delta $* --seed $(SEED) --out $@
$(AM_)/pert_%_stage2.caffemodel: $(M)/bm.caffemodel $(W)/pert_%_eq5.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage2 --name pert_$*_stage2 --init $< \
	  --loss-weights $(W)/pert_$*_eq5.json --out $@ $(STAGE_OPTS)
$(AM_)/pert_%_wm.caffemodel: $(AM_)/pert_%_stage2.caffemodel $(W)/pert_%_eq5.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage3 --name pert_$*_stage3 --init $< \
	  --loss-weights $(W)/pert_$*_eq5.json --out $@ $(STAGE_OPTS)
$(A)/perturbation.json: $(M)/wm.caffemodel $(foreach d,$(PERT_DELTAS),$(AM_)/pert_$(d)_wm.caffemodel)
	$(AUDIT) ablation perturbation --run $(RUN) --out $@
# single heads (Section IV-C-3): each head of the multi-center net alone
$(A)/single_head.json: $(M)/heads.caffemodel $(M)/wm.caffemodel $(M)/am.caffemodel
	$(AUDIT) ablation single_head --run $(RUN) --out $@
# Simplified AM (Section IV-C-4): heads from BM, weighting fine-tuning skipped
$(W)/bm_eq9.json: $(M)/bm.caffemodel
	$(LIGHT) tools/compute_weights.py --run $(RUN) --model $< --eq 9 --out $@
$(AM_)/sam_heads.caffemodel: $(M)/bm.caffemodel $(W)/bm_eq9.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage heads --name sam_heads --init $< --loss-weights $(W)/bm_eq9.json \
	  --out $@ $(STAGE_OPTS)
$(AM_)/sam.caffemodel: $(AM_)/sam_heads.caffemodel
	$(LIGHT) tools/assemble.py --run $(RUN) --heads $< --out $@
$(A)/simplified_am.json: $(AM_)/sam.caffemodel $(M)/am.caffemodel
	$(AUDIT) ablation simplified_am --run $(RUN) --out $@
# Weighting Simplified AM: weighting fine-tuning (stages 2, 3) applied to Simplified AM
$(W)/sam_eq5.json: $(AM_)/sam.caffemodel
	$(LIGHT) tools/compute_weights.py --run $(RUN) --model $< --eq 5 --out $@
$(AM_)/wsam_stage2.caffemodel: $(AM_)/sam.caffemodel $(W)/sam_eq5.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage2 --name wsam_stage2 --init $< --loss-weights $(W)/sam_eq5.json \
	  --out $@ $(STAGE_OPTS)
$(AM_)/wsam.caffemodel: $(AM_)/wsam_stage2.caffemodel $(W)/sam_eq5.json $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage stage3 --name wsam_stage3 --init $< --loss-weights $(W)/sam_eq5.json \
	  --out $@ $(STAGE_OPTS)
$(A)/weighting_simplified_am.json: $(AM_)/wsam.caffemodel $(AM_)/sam.caffemodel $(M)/am.caffemodel
	$(AUDIT) ablation weighting_simplified_am --run $(RUN) --out $@
# occlusion (Section IV-D): 30% of the test faces with the left-eye cluster's box gray
$(A)/occlusion.json: $(M)/wm.caffemodel $(M)/am.caffemodel
	$(AUDIT) ablation occlusion --run $(RUN) --seed $(SEED) --out $@
# equal budget (beyond the paper): BM continued with uniform weights for the iterations
# of stages 2, 3 and the heads together
$(M)/equal_budget.caffemodel: $(M)/bm.caffemodel $(BN)
	$(TRAIN) tools/run_stage.py --run $(RUN) --stage equal_budget --init $< --out $@ $(STAGE_OPTS)
$(A)/equal_budget.json: $(M)/equal_budget.caffemodel $(M)/wm.caffemodel $(M)/am.caffemodel
	$(AUDIT) ablation equal_budget --run $(RUN) --out $@

# The perturbation's chain of patterns: its files are kept, not removed as intermediates.
.SECONDARY: $(foreach d,$(PERT_DELTAS),$(W)/pert_$(d)_eq5.json $(AM_)/pert_$(d)_stage2.caffemodel)
.PHONY: audit audit-models $(AUDIT_TARGETS)
$(foreach t,$(AUDIT_TARGETS),$(eval $(t): $(A)/$(t).json))
audit-models: $(A)/models.json
AUDIT_PARTS ?= $(AUDIT_TARGETS)
$(A)/audit.json: $(A)/models.json $(foreach t,$(AUDIT_PARTS),$(A)/$(t).json) $(RUN)/eval/test.json
	$(AUDIT) report --run $(RUN)
audit: $(A)/audit.json
	@echo "audit done: $(A)/audit.md (report), $(A)/audit.json, $(A)/*.png"

# ---- the audit across seeds (docs/CLUSTER.md) ----------------------------------------
# One run folder per dataset and seed, SWEEP/<dataset>-<layout>-s<seed>, each made by `make audit`
# (AUDIT_PARTS chooses its parts) with every other setting of this make; then SWEEP/sweep.md,
# sweep.json and plots. `make -j16 sweep LAUNCH_TRAIN="srun ..."` keeps up to 16 jobs queued.
# A dataset's data root: DATA_ROOT_<dataset> (e.g. DATA_ROOT_cofw=...), else DATA_ROOT.
SEEDS ?= $(SEED)
DATASETS ?= $(DATASET)
SWEEP ?= runs/sweep
sweep_layout = $(if $(filter command line,$(origin LAYOUT)),$(LAYOUT),$(layout_$(1)))
SWEEP_RUNS := $(foreach d,$(DATASETS),$(foreach s,$(SEEDS),$(SWEEP)/$(d)-$(call sweep_layout,$(d))-s$(s)))
# Each run's make decides what is out of date (and holds its own run folder's lock); the report is
# remade only when an audit changed.
# (Defined only for the sweep's own make: a run's make must see its audit's rule alone.)
ifneq ($(filter sweep $(SWEEP)/sweep.json,$(MAKECMDGOALS)),)
define sweep_run
$(SWEEP)/$(1)-$(2)-s$(3)/audit/audit.json: FORCE | $(SETUP_STAMP)
	+$$(MAKE) --no-print-directory audit RUN=$(SWEEP)/$(1)-$(2)-s$(3) DATASET=$(1) LAYOUT=$(2) SEED=$(3) \
	  $$(if $$(DATA_ROOT_$(1)),DATA_ROOT=$$(DATA_ROOT_$(1)))
endef
$(foreach d,$(DATASETS),$(foreach s,$(SEEDS),$(eval $(call sweep_run,$(d),$(call sweep_layout,$(d)),$(s)))))
$(SWEEP)/sweep.json: $(addsuffix /audit/audit.json,$(SWEEP_RUNS))
	$(call launcher,$(LAUNCH)) tools/sweep.py --out $(SWEEP) $(SWEEP_RUNS)
endif
.PHONY: sweep
sweep: $(SWEEP)/sweep.json
	@echo "sweep done: $(SWEEP)/sweep.md (report), $(SWEEP)/sweep.json, $(SWEEP)/sweep_*.png"

# ---- the method on a second architecture (docs/METHOD_PYTORCH.md) ----------------
# Algorithm 1 in PyTorch (mcl/method/pytorch.py) on the run's data, scored like the audit and beside the
# run's own BM / WM / AM where they are made; AM exported to ONNX. Schedule and scale: the run's unless given.
MODEL ?= mobilenet_v2_0.5
AUDIT_MODEL_OPTS ?=
.PHONY: audit-model
audit-model: $(DATA) | $(SETUP_STAMP)
	$(TRAIN) tools/audit_model.py --run $(RUN) --model $(MODEL) --device $(DEVICE) --seed $(SEED) \
	  $(if $(filter command line environment,$(origin SCALE)),--scale $(SCALE)) \
	  $(if $(filter command line environment,$(origin SCHEDULE)),--schedule $(SCHEDULE)) \
	  $(if $(BATCH),--batch $(BATCH)) $(AUDIT_MODEL_OPTS)

# ---- porting the model out of Caffe (docs/PORT.md) ------------------------------
# Defaults: the run's AM. `make port` never trains: without the model it says so.
PROTOTXT ?= $(M)/am_deploy.prototxt
CAFFEMODEL ?= $(M)/am.caffemodel
OUT ?= $(RUN)/port
PORT_OPTS ?=
BENCH_PORT_OPTS ?=
PORT_ONNX := $(OUT)/$(basename $(notdir $(CAFFEMODEL))).onnx

# The model is read, not made: its timestamps decide, so a finished port does nothing
# and a port never sets off the pipeline's rules.
port: | $(SETUP_STAMP)
	@test -f $(PROTOTXT) -a -f $(CAFFEMODEL) || { echo "port: $(PROTOTXT) or $(CAFFEMODEL) missing" \
	  "(make assemble first, or give PROTOTXT= CAFFEMODEL=)" >&2; exit 2; }
	@if [ $(PORT_ONNX) -nt $(CAFFEMODEL) -a $(PORT_ONNX) -nt $(PROTOTXT) ]; then \
	  echo "port: $(PORT_ONNX) is up to date"; \
	else $(PY) tools/port.py export --prototxt $(PROTOTXT) --caffemodel $(CAFFEMODEL) --out $(OUT) \
	  $(if $(wildcard $(RUN)/data/manifest.json),--run $(RUN)) $(PORT_OPTS); fi

bench-port: | $(SETUP_STAMP)
	$(PY) benchmarks/bench_port.py $(if $(wildcard $(M)/am.caffemodel),--run $(RUN)) $(BENCH_PORT_OPTS)

.PHONY: port bench-port

# ---- face detectors on real test faces (benchmarks/detectors.py; reads ../shared/data or MCL_DATA) ----
DETBENCH_OUT ?= runs/bench-detect
DETBENCH_OPTS ?=
bench-detect: | $(SETUP_STAMP)
	$(PY) benchmarks/detectors.py --out $(DETBENCH_OUT) $(DETBENCH_OPTS)
.PHONY: bench-detect

# ---- peers: dlib's 68-point shape predictor on the same faces (optional; docs/PORT.md) ---------
# dlib-bin from PyPI runs it; Debian's libdlib-data ships the model (300-W's terms: no commercial use).
DLIB_DAT := /usr/share/dlib/shape_predictor_68_face_landmarks.dat
PEERS_OPTS ?=
setup-peers: | $(SETUP_STAMP)
	$(PY) -c "import dlib" 2>/dev/null || $(PY) -m pip install dlib-bin
	$(PY) -c "import mediapipe" 2>/dev/null || $(PY) -m pip install $$($(PY) -c "from mcl.port.peers import MP_PIP; print(MP_PIP)")
	@test -f $(DLIB_DAT) || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y libdlib-data || { $$SUDO apt-get update && $$SUDO apt-get install -y libdlib-data; }; }
	@test -f $(DLIB_DAT) || { echo "setup-peers: $(DLIB_DAT) missing after apt-get install libdlib-data" >&2; exit 2; }

# dlib on the run's test split (the split's boxes, and dlib's own detector): RUN/peers/, which the
# audit's report then includes; score it with tools/evaluate.py --predictions.
peers: setup-peers
	$(PY) tools/peers.py --run $(RUN) $(PEERS_OPTS)

.PHONY: setup-peers peers

# ---- the committed reference nets, diagrams, benchmarks -----------------------
nets: | $(SETUP_STAMP)
	$(PY) tools/make_nets.py --out .

diagrams: | $(SETUP_STAMP)
	$(PY) tools/draw_nets.py --out docs/img

bench-nets: | $(SETUP_STAMP)
	$(PY) tools/bench_nets.py

# gpu-check: the torch engine on GPU_DEVICE checked against the CPU step by step, timed, the paper's
# schedule projected (docs/GPU.md). The machine's own python3: no .venv, no Caffe. GPU_DEVICE=cpu: the dry run.
GPU_PY ?= python3
GPU_DEVICE ?= cuda
GPU_CHECK_STEPS ?= 20
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) benchmarks/gpu_check.py --device $(GPU_DEVICE) --steps $(GPU_CHECK_STEPS) --json gpu-check.json

# Caffe and the torch engine side by side: ms/iteration of stage 1 and the joint heads (68 points, batch 64);
# on a GPU (DEVICE=cuda) the torch engine alone, throughput and latency, and the paper's schedule projected.
.PHONY: bench-engine
bench-engine: | $(SETUP_STAMP)
	$(PY) benchmarks/bench_engine.py --device $(DEVICE)

# The torch engine's CPU step against the thread count, fp32 and (where the CPU has bfloat16) PRECISION=bf16
# side by side (docs/BENCHMARKS.md, "How the step scales with cores"). BENCH_THREADS: default 1, 2, all cores.
BENCH_THREADS ?=
.PHONY: bench-threads
bench-threads: | $(SETUP_STAMP)
	$(PY) benchmarks/engine_threads.py --layouts 68,5 --precisions fp32,bf16 $(if $(BENCH_THREADS),--threads $(BENCH_THREADS))

# Candidate speed-ups of the torch engine's fp32 CPU step (channels-last, torch.compile, compiled BatchNorm-Scale-ReLU
# chains and pooling, a uint8 feed, prefetching, threads and OpenMP settings), each beside the engine's own step in the
# same rounds, with its numerics against fp32 and float64 (docs/BENCHMARKS.md, "fp32 candidates").
# BENCH_CANDIDATES_OUT: the JSON written (default none).
BENCH_CANDIDATES_OUT ?=
.PHONY: bench-candidates
bench-candidates: | $(SETUP_STAMP)
	$(PY) benchmarks/engine_candidates.py --layouts 68,5 $(if $(BENCH_CANDIDATES_OUT),--out $(BENCH_CANDIDATES_OUT))

# The demo: Algorithm 1, the evaluation, the audit's controls, the port of AM to ONNX
# (checked against Caffe), a real photo aligned by the in-box model, then one summary table.
# Unlike `make port`, the demo's port of AM is a file the pipeline makes after assembly.
DEMO_ONNX := $(RUN)/port/am.onnx
$(DEMO_ONNX): $(M)/am.caffemodel
	$(LIGHT) tools/port.py export --prototxt $(M)/am_deploy.prototxt --caffemodel $< --out $(RUN)/port --run $(RUN)
# The demo ends on a real photo (scikit-image's astronaut, public domain) aligned by the in-box
# 68-point model, trained on real 300-W faces (models/mcl-68-300w; mcl/port/inbox.py).
DEMO_PHOTO := $(RUN)/photo/astronaut.json
$(RUN)/photo/astronaut.png: | $(SETUP_STAMP)
	$(LIGHT) tools/sample_photo.py --out $@
$(DEMO_PHOTO): $(RUN)/photo/astronaut.png $(wildcard models/mcl-68-300w/mcl-68-300w.onnx)
	$(LIGHT) tools/predict.py $< --out $(RUN)/photo --quiet
$(RUN)/summary.json: $(RUN)/eval/test.json $(A)/audit.json $(DEMO_ONNX) $(DEMO_PHOTO)
	$(LIGHT) tools/summary.py --run $(RUN) --onnx $(DEMO_ONNX) --photo $(DEMO_PHOTO)

demo: $(RUN)/summary.json
	@cat $(RUN)/summary.md

# ---- the paper on real faces (docs/REAL_DATA.md) ------------------------------------------
# make paper DATASET=mtfl DATA_ROOT=shared/data/mtfl: Algorithm 1 and the equal-budget control at SCHEDULE=real
# (torch engine), the learning curve of stage 1, the models and the peers on the test split and on
# EXTRA_TESTS, the audit across PAPER_SEEDS at PAPER_SEED_SCHEDULE through `make sweep` (PAPER_SEEDS= skips
# it), and RUN/paper/report.md beside the paper's table (mcl/method/paper.py).
# EXTRA_TESTS: NAME=FOLDER[:WIDTH] test sets cropped like the test split (data_prep/extra_test.py); for MTFL
# by default net_rest beside DATA_ROOT, whole and reduced to 80 px wide as the AFLW pictures were.
NET_REST ?= $(patsubst %/,%,$(dir $(abspath $(DATA_ROOT))))/net_rest
EXTRA_TESTS ?= $(if $(filter mtfl,$(DATASET)),$(if $(wildcard $(NET_REST)/testing.txt),net_rest=$(NET_REST) \
  net_rest_80=$(NET_REST):80))
EXTRA_NAMES := $(foreach e,$(EXTRA_TESTS),$(firstword $(subst =, ,$(e))))
PAPER_SEEDS ?= 0 1 2
PAPER_SEED_SCHEDULE ?= real-short
PAPER_SWEEP ?= runs/sweep-$(DATASET)
PEERS ?= dlib,mediapipe
P := $(RUN)/paper
$(RUN)/data/%.manifest.json: $(DATA)
	$(LIGHT) data_prep/extra_test.py --run $(RUN) --workers $(WORKERS) --quiet $(filter $*=%,$(EXTRA_TESTS))
$(RUN)/peers/peers.json: $(DATA) | setup-peers
	$(LIGHT) tools/peers.py --run $(RUN) --peers $(PEERS)
$(RUN)/peers/%/peers.json: $(RUN)/data/%.manifest.json | setup-peers
	$(LIGHT) tools/peers.py --run $(RUN) --split $* --peers $(PEERS)
$(RUN)/curves/stage1.json: $(M)/bm.caffemodel
	$(LIGHT) tools/learning_curve.py --run $(RUN) --stage stage1 --snapshots --bn-batches 10
# (Defined only for the paper's own make: the sweep's make has its own rule for its sweep.json.)
ifneq ($(and $(strip $(PAPER_SEEDS)),$(filter paper,$(MAKECMDGOALS))),)
$(PAPER_SWEEP)/sweep.json: | $(SETUP_STAMP)
	+$(MAKE) --no-print-directory sweep DATASETS=$(DATASET) SEEDS="$(PAPER_SEEDS)" SCHEDULE=$(PAPER_SEED_SCHEDULE) \
	  SWEEP=$(PAPER_SWEEP) AUDIT_PARTS=equal_budget KEEP_SNAPSHOTS=on $(if $(DATA_ROOT),DATA_ROOT_$(DATASET)=$(DATA_ROOT))
endif
$(P)/report.json: $(M)/bm.caffemodel $(M)/wm.caffemodel $(M)/am.caffemodel $(M)/equal_budget.caffemodel \
  $(RUN)/peers/peers.json $(foreach n,$(EXTRA_NAMES),$(RUN)/data/$(n).manifest.json $(RUN)/peers/$(n)/peers.json) \
  $(RUN)/curves/stage1.json $(if $(strip $(PAPER_SEEDS)),$(PAPER_SWEEP)/sweep.json)
	$(LIGHT) tools/paper_report.py --run $(RUN) --splits test $(EXTRA_NAMES) \
	  $(if $(strip $(PAPER_SEEDS)),--sweep $(PAPER_SWEEP)/sweep.json) --out $(P)
.PHONY: paper
paper: $(P)/report.json
	@echo "paper done: $(P)/report.md (report), $(P)/report.json, $(P)/*.png"

# ---- the models in the box (mcl/port/inbox.py; models/<name>/MODEL_CARD.md) ----------------------
# tools/predict.py without --model uses them. `make models` packages them from finished `make paper` runs:
# the 5-point AM from MTFL (MODELS_RUN5) and the 68-point AM from the 300-W part (MODELS_RUN68), each with
# its deploy net, caffemodel, ONNX (checked against Caffe) and model card (docs/REAL_DATA.md says how the
# runs were made).
MODELS_RUN5 ?= runs/paper-mtfl
MODELS_RUN68 ?= runs/paper-300w
models: | $(SETUP_STAMP)
	$(PY) tools/package_model.py --run $(MODELS_RUN5) --name mcl-5-mtfl --splits test=AFLW net_rest net_rest_80 \
	  --box-convention mtfl --terms mtfl --data-title "MTFL (10,000 training faces: LFW and web pictures)"
	$(PY) tools/package_model.py --run $(MODELS_RUN68) --name mcl-68-300w --splits "test=HELEN test" \
	  --box-convention 300w --terms 300w --data-title "part of 300-W (AFW and 870 HELEN training pictures)"
	$(PY) tools/port.py int8 --onnx models/mcl-5-mtfl/mcl-5-mtfl.onnx --prototxt models/mcl-5-mtfl/deploy.prototxt \
	  --caffemodel models/mcl-5-mtfl/mcl-5-mtfl.caffemodel --run $(MODELS_RUN5)
	$(PY) tools/port.py int8 --onnx models/mcl-68-300w/mcl-68-300w.onnx --prototxt models/mcl-68-300w/deploy.prototxt \
	  --caffemodel models/mcl-68-300w/mcl-68-300w.caffemodel --run $(MODELS_RUN68)
.PHONY: models

# Every checksum of RUN/manifest.json and RUN/data/manifest.json, recomputed: names each
# file that is missing or changed (exit 2), or says the run is intact.
.PHONY: verify
verify: | $(SETUP_STAMP)
	$(PY) tools/verify.py --run $(RUN)

clean-run:
	rm -rf $(RUN)
