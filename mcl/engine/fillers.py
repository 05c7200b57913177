"""The iteration-0 weights of a train net.

Where pycaffe is importable (always after `make setup`) they are Caffe's own: the
solver built exactly as the Caffe runner builds it (SGDSolver seeds Caffe's RNG with
random_seed, then the fillers run in layer order), so both engines start from the
same numbers and stage 1 from scratch is comparable iteration by iteration.

Without pycaffe the engine keeps the weights mcl.torchnet draws from the same
fillers' distributions (filler.hpp: msra, xavier, gaussian, uniform, constant) with
torch's generator seeded with random_seed: the same distributions, not the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def caffe_initial_blobs(run: Path, solver_path: Path) -> dict[str, list[np.ndarray]] | None:
    """Caffe's iteration-0 blobs for this solver's train net, or None without pycaffe."""
    try:
        import caffe
    except ImportError:
        return None
    cwd = os.getcwd()
    os.chdir(run)  # the solver's paths are relative to the run folder
    try:
        caffe.set_mode_cpu()
        solver = caffe.SGDSolver(str(Path(solver_path).resolve()))
        blobs = {name: [np.array(b.data, dtype=np.float32) for b in params]
                 for name, params in solver.net.params.items()}
        del solver
    finally:
        os.chdir(cwd)
    return blobs
