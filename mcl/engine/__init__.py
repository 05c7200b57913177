"""The torch engine: a run's own solver and train net trained in PyTorch with Caffe's numerics.

Caffe stays the reference. The engine reads the same generated files
(`nets/<stage>_train.prototxt`, `solvers/<stage>_solver.prototxt`), feeds the same
batches, updates as Caffe's SGD does and writes the same caffemodels and snapshots,
so everything downstream (weights, assembly, evaluation) runs unchanged in Caffe.
Its equality with Caffe is tested stage by stage (tests/test_engine.py).

  sgd.py      a solver file's settings as Caffe reads them; the update itself (Caffe's SGD, the "step"
              policy, the batch order) is mcl.method.sgd's, which mcl.method.pytorch runs too
  feeds.py    the HDF5Data / LMDB Data layers, in Caffe's order
  fillers.py  iteration-0 weights (Caffe's own where pycaffe is there)
  device.py   the device: checked (named errors), set up (deterministic, TF32 off by default), described
  fused.py    FusedNet: BatchNorm-Scale-ReLU chains as one kernel, each Eq. 4 group as one reduction
  fixed.py    the fixed leading layers (the fixed prefix) computed once per training row
  solver.py   Solver: the counterpart of pycaffe's SGDSolver (step, snapshot, restore)
  schedule.py the paper's schedule projected from measured rates (no torch: the benchmark's parent uses it)

The engine benchmark (`make bench-engine`) and the GPU check (`make gpu-check`) are harnesses outside
the package: benchmarks/bench_engine.py and benchmarks/gpu_check.py.

May import: `mcl.method`, `mcl.caffe` (its file layer: proto, caffemodel; never pycaffe, so the engine
runs where no Caffe is built), `mcl.torchnet` and `mcl.fileio`. torch at module top: only
the stage's child process (mcl.run.torch_engine) and the harnesses import this package's modules.
"""


# cuBLAS's reproducible workspace (CUDA's reproducibility notes), here so that the worker can set
# CUBLAS_WORKSPACE_CONFIG before torch loads (importing this package imports nothing).
CUBLAS_WORKSPACE = ":4096:8"
# The engine's options as words, defined once here so that the stage runner and its worker check them
# without loading torch: a device (`cpu`, `cuda`, `cuda:N`; device.check_device then checks the machine
# has it) and a training precision (fp32, the default, or the opt-in bf16; device.check_precision).
DEVICE_PATTERN = r"cpu|cuda(?::(\d+))?"
PRECISIONS = ("fp32", "bf16")
