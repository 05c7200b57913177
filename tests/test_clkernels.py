"""The torch engine's channels-last fp32 CPU kernels (mcl/engine/clkernels.py, csrc/clkernels.c) and its heap.

The BatchNorm-Scale-ReLU chain is held to the same chain computed in float64 by plain autograd (the
expected values come from torch's double arithmetic, not from the kernels), on maps whose channel means
are large against their spread: where one-pass float32 sums cancel. The MAX pooling is held bit for bit
to PyTorch's, and to Caffe's rule for ties (the first maximum of a window in row-major order takes the
gradient). The engine uses them on fp32 CPU runs, deterministically; without a C compiler it keeps
PyTorch's NCHW kernels; two processes building the library at once both load it. keep_heap stops the
page faults that a large block freed and allocated again costs with glibc's defaults.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, new_run

from mcl.engine import clkernels
from mcl.engine.device import bf16_support
from mcl.engine.solver import Solver

torch.set_num_threads(2)
CL = torch.channels_last
EPS = 1e-5
# float32 has 24 significant bits (relative rounding 6e-8); a sum of m terms accumulated in double and
# rounded once is off by about that. 1e-5 leaves room for the float32 inputs of each element's
# products, and fails a sum accumulated in float32 where it cancels (PyTorch's channels-last kernel is
# off by 9e-4 in the input's gradient on these maps: test_chain_matches_float64_where_float32_sums_cancel).
TOL = 1e-5


def needs_kernels():
    if clkernels.load() is None:
        pytest.skip(f"the channels-last kernels did not build here: {clkernels.reason()}")


def fake_bn(c: int):
    return types.SimpleNamespace(use_global_stats=False, eps=EPS, maf=0.999, factor=torch.zeros(1),
                                 mean_sum=torch.zeros(c), var_sum=torch.zeros(c))


def reference(x, gamma, beta, dy, relu):
    """The chain in float64 by autograd: (x - mean) / sqrt(var + eps) * gamma + beta, then ReLU."""
    x = x.double().clone().requires_grad_()
    g = gamma.double().clone().requires_grad_()
    b = beta.double().clone().requires_grad_() if beta is not None else None
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    y = (x - mean) / torch.sqrt(var + EPS) * g.view(1, -1, 1, 1)
    if b is not None:
        y = y + b.view(1, -1, 1, 1)
    if relu:
        y = torch.relu(y)
    y.backward(dy.double())
    m = x.numel() // x.shape[1]
    return {"y": y.detach(), "dx": x.grad, "dgamma": g.grad, "dbeta": None if b is None else b.grad,
            "mean": mean.detach().flatten(), "var_unbiased": var.detach().flatten() * m / (m - 1)}


def rel(a, b) -> float:
    return float((a.double() - b).norm() / b.norm())


def maps(seed=0, n=16, c=16, h=32, w=32, offset=8.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen) * 0.25 + torch.randn(1, c, 1, 1, generator=gen) * offset
    gamma = torch.rand(c, generator=gen) + 0.5
    beta = torch.randn(c, generator=gen) * 0.2
    dy = torch.randn(n, c, h, w, generator=gen) * 1e-2
    return x, gamma, beta, dy


def run_chain(x, gamma, beta, dy, relu, bn=None, fmt=CL, out_bf16=False):
    bn = bn or fake_bn(x.shape[1])
    x = x.contiguous(memory_format=fmt).requires_grad_()
    g = gamma.clone().requires_grad_()
    b = beta.clone().requires_grad_() if beta is not None else None
    y = clkernels.chain(bn, x, g, b, relu, out_bf16=out_bf16)
    assert y is not None and y.is_contiguous(memory_format=fmt)
    y.backward(dy.contiguous(memory_format=fmt))
    return {"y": y.detach(), "dx": x.grad, "dgamma": g.grad, "dbeta": None if b is None else b.grad}, bn


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("relu,bias", [(True, True), (False, True), (True, False)])
def test_chain_matches_float64_where_float32_sums_cancel(relu, bias, fmt):
    needs_kernels()
    x, gamma, beta, dy = maps()
    beta = beta if bias else None
    ref = reference(x, gamma, beta, dy, relu)
    got, bn = run_chain(x, gamma, beta, dy, relu, fmt=fmt)
    for key in ("y", "dx", "dgamma") + (("dbeta",) if bias else ()):
        assert rel(got[key], ref[key]) < TOL, (key, rel(got[key], ref[key]))
    # the running blobs move as BatchNorm.native moves them: factor 1, the batch mean, the m/(m-1) variance
    assert float(bn.factor) == 1.0
    assert rel(bn.mean_sum, ref["mean"]) < TOL and rel(bn.var_sum, ref["var_unbiased"]) < TOL
    if relu and bias and fmt == CL:  # the case the kernels exist for: PyTorch's channels-last kernel loses digits
        xc = x.contiguous(memory_format=CL).requires_grad_()
        g, b = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
        y = F.relu(F.batch_norm(xc, torch.zeros(16), torch.ones(16), g, b, True, 1.0, EPS))
        y.backward(dy.contiguous(memory_format=CL))
        assert max(rel(xc.grad, ref["dx"]), rel(g.grad, ref["dgamma"])) > 10 * TOL


@pytest.mark.parametrize("out_bf16", [False, True], ids=["out_float32", "out_bfloat16"])
@pytest.mark.parametrize("relu,bias", [(True, True), (False, False)])
def test_chain_on_bfloat16_maps_is_the_float32_chain_on_their_cast(relu, bias, out_bf16):
    """bf16 training's maps: the chain reads them as they are and gives, bit for bit, what the float32 chain gives
    on x.float() (its output, its running blobs, the Scale's gradients), and x's gradient as PyTorch's cast
    rounds that one to bfloat16 (nearest even; 262,144 values, so about four exact ties among them). With
    out_bf16 its output is that output cast to bfloat16, and it takes its gradient in bfloat16."""
    needs_kernels()
    x, gamma, beta, dy = maps()
    beta = beta if bias else None
    x16 = x.to(torch.bfloat16)
    dy = dy.to(torch.bfloat16) if out_bf16 else dy
    want, bn_want = run_chain(x16.float(), gamma, beta, dy.float(), relu)
    got, bn_got = run_chain(x16, gamma, beta, dy, relu, out_bf16=out_bf16)
    assert got["y"].dtype == (torch.bfloat16 if out_bf16 else torch.float32) and got["dx"].dtype == torch.bfloat16
    assert got["dx"].is_contiguous(memory_format=CL)
    assert torch.equal(got["y"], want["y"].to(got["y"].dtype)) and torch.equal(got["dgamma"], want["dgamma"])
    assert torch.equal(got["dx"], want["dx"].to(torch.bfloat16))
    if bias:
        assert torch.equal(got["dbeta"], want["dbeta"])
    assert torch.equal(bn_got.mean_sum, bn_want.mean_sum) and torch.equal(bn_got.var_sum, bn_want.var_sum)
    # NCHW bfloat16 maps are not read (the engine's bf16 maps are channels-last; others go through a cast)
    assert clkernels.chain(fake_bn(16), x16.contiguous(), gamma, beta, relu) is None


def test_chain_declines_what_it_does_not_do():
    needs_kernels()
    x, gamma, beta, _ = maps()
    bn = fake_bn(16)
    assert clkernels.chain(bn, x[:, :, ::2], gamma, beta, True) is None  # neither NCHW nor channels-last dense
    assert clkernels.chain(bn, x.double().contiguous(memory_format=CL), gamma, beta, True) is None
    bn.use_global_stats = True
    assert clkernels.chain(bn, x.contiguous(memory_format=CL), gamma, beta, True) is None
    assert float(bn.factor) == 0.0  # nothing moved


def pool_layer(h, w, k=2, ceil=True):
    out = tuple((math.ceil if ceil else math.floor)((s - k) / k) + 1 for s in (h, w))
    return types.SimpleNamespace(max=True, glob=False, pad=(0, 0), stride=(k, k), kernel=(k, k), out=out)


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("h,w,ceil", [(12, 12, True), (13, 11, True), (13, 11, False)])
def test_max_pool_is_pytorchs_bit_for_bit(h, w, ceil, fmt):
    needs_kernels()
    gen = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(4, 24, h, w, generator=gen))  # ReLU maps: many ties at 0
    layer = pool_layer(h, w, ceil=ceil)
    dy = torch.randn(4, 24, *layer.out, generator=gen)
    xa = x.clone().requires_grad_()
    ya = F.max_pool2d(xa, 2, 2, ceil_mode=ceil)
    ya.backward(dy)
    xb = x.contiguous(memory_format=fmt).requires_grad_()
    yb = clkernels.pool(layer, xb)
    yb.backward(dy)
    assert yb.is_contiguous(memory_format=fmt) and xb.grad.is_contiguous(memory_format=fmt)
    assert yb.shape == ya.shape and torch.equal(yb, ya) and torch.equal(xb.grad, xa.grad)


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format], ids=["channels_last", "nchw"])
def test_max_pool_gives_a_tie_to_the_first_in_row_major_order(fmt):
    """Caffe's pooling_layer.cpp keeps the first maximum (a strict >), scanning rows then columns."""
    needs_kernels()
    x = torch.zeros(1, 8, 3, 3)
    x[0, :, 0, 1] = x[0, :, 1, 0] = 5.0  # window (0, 0): maxima at positions 1 and 2
    x[0, :, 2, 2] = -1.0  # window (1, 1), clipped to one element
    layer = pool_layer(3, 3)
    xb = x.contiguous(memory_format=fmt).requires_grad_()
    y = clkernels.pool(layer, xb)
    y.backward(torch.ones_like(y))
    grad = xb.grad[0, 0]
    assert y[0, 0].tolist() == [[5.0, 0.0], [0.0, -1.0]]
    assert grad.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]


@pytest.mark.parametrize("fmt", [CL, torch.contiguous_format], ids=["channels_last", "nchw"])
def test_global_average_pool_keeps_one_gradient_per_channel(fmt):
    needs_kernels()
    layer = types.SimpleNamespace(max=False, glob=True, pad=(0, 0), stride=(1, 1), kernel=(7, 7), out=(1, 1))
    x, gamma, beta, _ = maps(n=8, h=7, w=7)
    dy = torch.randn(8, 16, 1, 1, generator=torch.Generator().manual_seed(2))
    ref = reference(x, gamma, beta, dy.expand(8, 16, 7, 7) / 49.0, True)
    xc = x.contiguous(memory_format=fmt).requires_grad_()
    g, b = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    pooled = clkernels.pool(layer, clkernels.chain(fake_bn(16), xc, g, b, True))
    assert torch.allclose(pooled.double(), ref["y"].mean(dim=(2, 3), keepdim=True), rtol=TOL, atol=1e-7)
    pooled.backward(dy)
    assert rel(xc.grad, ref["dx"]) < TOL and rel(g.grad, ref["dgamma"]) < TOL


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 5-point run, 32 training faces, batch 8."""
    return new_run(tmp_path_factory.mktemp("clkernels") / "run", scale=0.0002, batch=8, n_train=32)


def train(run, steps=3, kernels=True, precision="fp32"):
    s = Solver(run, "solvers/stage1_solver.prototxt", fillers="torch", precision=precision)
    if not kernels:  # the engine as it was before: NCHW maps, PyTorch's kernels
        s.net.to(memory_format=torch.contiguous_format)
        s.fused.kernels = False
    for _ in range(steps):
        s.step()
    return s


def test_the_engine_trains_with_them_deterministically(run):
    needs_kernels()
    a, b = train(run), train(run)
    assert a.maps == "channels-last, mcl kernels" and a.fused.kernels
    assert a.net.layer("conv12").weight.is_contiguous(memory_format=CL)
    for name, blobs in a.blobs().items():
        for x, y in zip(blobs, b.blobs()[name]):
            assert np.array_equal(x, y), name
    before = train(run, kernels=False)
    for name, blobs in a.blobs().items():
        for x, y in zip(blobs, before.blobs()[name]):
            assert np.allclose(x, y, rtol=1e-4, atol=1e-6), name


@pytest.mark.skipif(bf16_support("cpu") is None, reason="this CPU has no bfloat16 instructions")
def test_bf16_training_reads_its_maps_as_they_are_and_keeps_its_bits(run, monkeypatch):
    """PRECISION=bf16 with the chain reading bfloat16 maps (and writing bfloat16 ones where convolutions alone
    read them) gives the same blobs, to the bit, as the chain fed through a float32 cast with a float32
    output (the engine before: its conversions round the same way)."""
    needs_kernels()
    plain, read = clkernels.chain, []

    def spy(bn, x, *rest, **kw):
        y = plain(bn, x, *rest, **kw)
        read.append(x.dtype == torch.bfloat16 and y is not None)
        return y
    monkeypatch.setattr(clkernels, "chain", spy)
    now = train(run, precision="bf16")
    assert read and all(read)  # every chain read its bfloat16 map itself
    assert now.fused.conv_read == {"conv11", "conv21", "conv31", "conv41", "conv42"}  # (5 points: conv43 -> pool)

    def through_a_cast(bn, x, *rest, **kw):  # (float32 out: autocast casts it for the convolution)
        return None if x.dtype == torch.bfloat16 else plain(bn, x, *rest)
    monkeypatch.setattr(clkernels, "chain", through_a_cast)
    before = train(run, precision="bf16")
    for name, blobs in now.blobs().items():
        for x, y in zip(blobs, before.blobs()[name]):
            assert np.array_equal(x, y), name


def test_nchw_maps_keep_the_kernels(run, monkeypatch):
    needs_kernels()
    monkeypatch.setenv("MCL_FP32_MAPS", "nchw")
    s = train(run, steps=2)
    assert s.maps == "NCHW, mcl kernels" and s.fused.kernels
    assert s.net.layer("conv12").weight.is_contiguous()
    before = train(run, steps=2, kernels=False)
    for name, blobs in s.blobs().items():
        for x, y in zip(blobs, before.blobs()[name]):
            assert np.allclose(x, y, rtol=1e-4, atol=1e-6), name


def child(code: str, env: dict, timeout=300) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_without_a_compiler_the_engine_keeps_pytorchs_kernels(run, tmp_path):
    code = ("import sys; from mcl.engine import clkernels; from mcl.engine.solver import Solver\n"
            f"s = Solver({str(run)!r}, 'solvers/stage1_solver.prototxt', fillers='torch'); s.step()\n"
            "print(s.maps); print(clkernels.reason())")
    out = child(code, {"CC": str(tmp_path / "no-such-cc"), "MCL_KERNEL_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    maps, why = out.stdout.splitlines()[-2:]
    assert maps == "NCHW" and "could not be built" in why and "no-such-cc" in why
    off = child(code, {"MCL_CL_KERNELS": "off"})
    assert off.returncode == 0 and off.stdout.splitlines()[-2:] == ["NCHW", "MCL_CL_KERNELS=off"], off.stderr


def test_two_processes_building_at_once_both_load_one_library(tmp_path):
    needs_kernels()
    cache = tmp_path / "cache"
    code = "from mcl.engine import clkernels; assert clkernels.load() is not None, clkernels.reason(); print('ok')"
    env = {**os.environ, "MCL_KERNEL_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 and o[0].strip() == "ok" for p, o in zip(procs, outs)), outs
    files = sorted(f.name for f in cache.iterdir())
    assert len(files) == 1 and files[0].startswith("clkernels-") and files[0].endswith(".so"), files


FAULTS = """
import os, resource, sys, time, torch
from pathlib import Path
sys.path.insert(0, "benchmarks")
import engine_profile
from mcl.engine.device import keep_heap
from mcl.engine.solver import Solver
run = Path(sys.argv[1])
engine_profile.write_run(run, "5", 64, 128)  # stage 1 at batch 64: maps of up to 20 MiB
os.chdir(run)
torch.set_num_threads(2)
s = Solver(run, run / "solvers/stage1_solver.prototxt", fillers="torch")
for _ in range(8):
    s.step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    s.step()
print(keep_heap())
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 4)
"""


def test_keep_heap_stops_the_page_faults_of_a_training_step(tmp_path):
    """A stage-1 step at batch 64 frees and takes again maps of up to 20 MiB: with glibc's defaults the heap
    gives them back and every step faults their pages in again (57,000 faults a step measured at 68 points,
    docs/ENGINE.md); kept, the steps after the first few fault a few hundred pages at most, then none."""
    faults = {}
    for name, env in (("kept", {}), ("default", {"MCL_KEEP_HEAP": "off"})):
        out = subprocess.run(
            [sys.executable, "-c", FAULTS, str(tmp_path / name)], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        faults[name] = out.stdout.splitlines()[-2:]
    assert faults["kept"][0].startswith("glibc heap kept") and faults["default"][0] == "default (MCL_KEEP_HEAP=off)"
    # a 20 MiB map is 5,120 pages of 4 KiB, and the step holds a dozen such maps: with the defaults tens of
    # thousands of faults a step; kept, the heap still settles in the first steps (a few hundred, then none)
    assert int(faults["default"][1]) > 5000 and int(faults["kept"][1]) * 20 < int(faults["default"][1]), faults
