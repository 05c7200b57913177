"""The iteration-0 weights of a train net.

Where pycaffe is importable (always after `make setup`) they are Caffe's own: the
solver built exactly as the Caffe runner builds it (SGDSolver seeds Caffe's RNG with
random_seed, then the fillers run in layer order), so both engines start from the
same numbers and stage 1 from scratch is comparable iteration by iteration.

Without pycaffe the engine draws from the same distributions with its own seeded
generator (not the same numbers): msra N(0, 2/n), xavier U(-sqrt(3/n), sqrt(3/n)),
gaussian, uniform, constant (filler.hpp), n = fan_in = count / shape[0] by default;
Scale's multiplier defaults to 1 and every bias and BatchNorm blob to 0.
"""

from __future__ import annotations

import math
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


def _fill(filler, shape, rng) -> np.ndarray:
    count = int(np.prod(shape))
    if filler.type == "constant":
        return np.full(shape, filler.value, np.float32)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    n = {0: fan_in, 1: fan_out, 2: (fan_in + fan_out) / 2}[filler.variance_norm]
    if filler.type == "msra":
        return rng.normal(0.0, math.sqrt(2.0 / n), shape).astype(np.float32)
    if filler.type == "xavier":
        a = math.sqrt(3.0 / n)
        return rng.uniform(-a, a, shape).astype(np.float32)
    if filler.type == "gaussian":
        return rng.normal(filler.mean, filler.std, shape).astype(np.float32)
    if filler.type == "uniform":
        return rng.uniform(filler.min, filler.max, shape).astype(np.float32)
    raise ValueError(f"filler {filler.type!r} is not supported by the torch engine")


def own_initial_blobs(net_param, shapes: dict[str, list[tuple]], seed: int) -> dict[str, list[np.ndarray]]:
    """Blobs drawn from the fillers' distributions; `shapes` are the net's blob shapes by layer."""
    from mcl.caffe_pb import caffe_pb2
    rng = np.random.default_rng(seed if seed >= 0 else None)
    out = {}
    for layer in net_param.layer:
        if layer.name not in shapes:
            continue
        want = shapes[layer.name]
        if layer.type == "Convolution":
            fillers = [layer.convolution_param.weight_filler, layer.convolution_param.bias_filler]
        elif layer.type == "InnerProduct":
            fillers = [layer.inner_product_param.weight_filler, layer.inner_product_param.bias_filler]
        elif layer.type == "Scale":
            one = caffe_pb2.FillerParameter(type="constant", value=1.0)
            sp = layer.scale_param
            fillers = ([sp.filler if sp.HasField("filler") else one] if len(layer.bottom) == 1 else []) \
                + [sp.bias_filler]
        elif layer.type == "BatchNorm":
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0.0)] * 3
        else:
            raise ValueError(f"layer {layer.name!r} of type {layer.type}: no filler rule in the torch engine")
        out[layer.name] = [_fill(f, tuple(s), rng) for f, s in zip(fillers, want)]
    return out
