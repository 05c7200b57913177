"""The stage runner: each row of Algorithm 1 trained resumably in a child process, then recorded in the
run folder's records (mcl.records: settings, manifest, provenance, verify, lock).

  stage       the stage runner: one row of Algorithm 1 (mcl.method.stages) trained resumably, then recorded
  worker      the stage's child process: one training loop for both engines (step, snapshot, restore)
  caffe_engine, torch_engine  the two engines behind the worker's interface (pycaffe's SGDSolver; mcl.engine's Solver)
  assemble    Algorithm 1's last step: AM from the heads, checked in Caffe, recorded
  launch      one recipe through a cluster launcher (LAUNCH_TRAIN, LAUNCH: srun): cancelled when make is
              interrupted, named with its run folder, stage and log when it fails (docs/CLUSTER.md)

May import: `mcl.method`, `mcl.caffe`, `mcl.data`, `mcl.records`, `mcl.engine`, `mcl.torchnet` and `mcl.fileio`; not
`mcl.evaluation` or `mcl.port`, which build on it. pycaffe and torch only in the engine modules,
which the worker imports on purpose inside a function, for the engine a stage asks for.
"""
