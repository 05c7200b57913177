"""The run folder: what a run is made with, what made each of its files, and the stage runner.

  settings    RUN/run.json: the run's settings, written once as JSON by tools/make_nets.py and read back
  manifest    RUN/manifest.json: every artifact's stage, settings, input checksums and wall time
  provenance  what a model was trained with (schedule, seed, engine, BatchNorm statistics), from the manifest
  stage       the stage runner: one row of Algorithm 1 (mcl.method.stages) trained resumably, then recorded
  worker      the stage's child process: one training loop for both engines (step, snapshot, restore)
  caffe_engine, torch_engine  the two engines behind the worker's interface (pycaffe's SGDSolver; mcl.engine's Solver)
  assemble    Algorithm 1's last step: AM from the heads, checked in Caffe, recorded
  launch      one recipe through a cluster launcher (LAUNCH_TRAIN, LAUNCH: srun): cancelled when make is
              interrupted, named with its run folder, stage and log when it fails (docs/CLUSTER.md)
  verify      `make verify`: every artifact against its recorded checksum; inputs checked before a stage

May import: `mcl.method`, `mcl.caffe`, `mcl.data`, `mcl.engine`, `mcl.torchnet` and `mcl.fileio`; not
`mcl.evaluation` or `mcl.port`, which build on it. pycaffe and torch only in the engine modules,
which the worker imports on purpose inside a function, for the engine a stage asks for.
"""
