"""The run folder: what a run is made with, what made each of its files, and the stage runner.

  settings    RUN/run.json: the run's settings, written once as JSON by tools/make_nets.py and read back
  manifest    RUN/manifest.json: every artifact's stage, settings, input checksums and wall time
  provenance  what a model was trained with (schedule, seed, engine, BatchNorm statistics), from the manifest
  stage       the stage runner: one row of Algorithm 1 (mcl.method.stages) trained resumably, then recorded
  worker      the stage's child process: one training loop for both engines (step, snapshot, restore)
  verify      `make verify`: every artifact against its recorded checksum; inputs checked before a stage

May import: `mcl.method`, `mcl.caffe` (its file layer, nets and statistics step; pycaffe only
through `mcl.caffe.train`, which the worker imports on purpose, inside a function, for the Caffe
engine), `mcl.engine` (likewise, for the torch engine), `mcl.data` and `mcl.fileio`.
"""
