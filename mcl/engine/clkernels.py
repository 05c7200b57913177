"""float32 CPU kernels for the training step, on channels-last and NCHW maps: BatchNorm -> Scale (-> ReLU)
and pooling (the chain also on bfloat16 maps).

The torch engine's fp32 CPU step keeps its maps channels-last where these kernels load (solver.py;
MCL_FP32_MAPS=nchw keeps them NCHW): oneDNN's convolutions then need no reorder, and the kernels below
replace PyTorch's BatchNorm and pooling. PyTorch's channels-last BatchNorm sums in float32 in one
pass, and its gradients lose digits where they cancel (docs/ENGINE.md); these sum every statistic
and every gradient sum in double per thread (csrc/clkernels.c), so they stay nearer float64
(tests/test_clkernels.py holds them to float64).

  chain(bn, x, weight, bias, relu)   the fused BatchNorm-Scale-ReLU chain (fused.py), batch statistics,
                                     the BatchNorm's running blobs moved as BatchNorm.native moves them
  pool(layer, x)                     a MAX Pooling layer whose stride equals its kernel, no padding;
                                     a global AVE one (its gradient kept one value per image and channel)

The chain also takes channels-last bfloat16 maps (bf16 training, whose convolutions give them): it reads
them as they are, each value widened exactly, so its statistics, its float32 output and its gradients are
the float32 kernels' on x cast to float32, and it writes x's gradient in bfloat16, rounded to nearest even
as a cast rounds it; the casts' two passes over the map each way are saved. Where a convolution alone reads
the chain's output (`out_bf16`), it also writes that output in bfloat16 and reads its gradient so: the cast
autocast would make, and the one it would undo.

Both return None where they do not apply (neither float32 nor, for the chain, channels-last bfloat16;
neither NCHW- nor channels-last-dense; not on the CPU; another pooling), and the caller runs its own path. The C source is compiled once per machine with the C
compiler (`CC`, else cc) into the cache directory (MCL_KERNEL_CACHE, else ~/.cache/mcl-caffe/kernels),
named after the source, the flags and the CPU: a second user or process finds it there or builds
its own copy under a temporary name renamed into place. Without a compiler, `load()` says why
(`reason()`) and the engine keeps PyTorch's NCHW kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "clkernels.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
ENV_CACHE = "MCL_KERNEL_CACHE"
ENV_OFF = "MCL_CL_KERNELS"  # "off": PyTorch's NCHW kernels (a comparison, or a machine without a compiler)

_lib = None
_reason = ""
_tried = False

_f32p = ctypes.POINTER(ctypes.c_float)
_f64p = ctypes.POINTER(ctypes.c_double)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_i64 = ctypes.c_int64
_vp = ctypes.c_void_p  # a float or a bfloat16 map (the chain's x and dx, with their x16 flag)
_int = ctypes.c_int


def _cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return Path.home() / ".cache" / "mcl-caffe" / "kernels"


def _cpu_key() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def library_path(cc: str) -> Path:
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, *FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    return _cache_dir() / f"clkernels-{key}.so"


def _build(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise OSError(f"{cc} failed on {SOURCE}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load():
    """The compiled kernels (a ctypes library), built on first use; None where they cannot be (reason())."""
    global _lib, _reason, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get(ENV_OFF, "").lower() in ("off", "0", "no"):
        _reason = f"{ENV_OFF}={os.environ[ENV_OFF]}"
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        _reason = "no C compiler (CC, cc or gcc) to build mcl/engine/csrc/clkernels.c"
        return None
    try:
        path = library_path(cc)
        if not path.exists():
            _build(cc, path)
        lib = ctypes.CDLL(str(path))  # torch has loaded its libgomp already: the kernels share its threads
    except (OSError, subprocess.SubprocessError) as exc:
        _reason = f"the channels-last kernels could not be built: {exc}"
        return None
    sig = {
        "mcl_bn_stats": (_int, [_vp, _int, _i64, _i64, _f64p, _f64p]),
        "mcl_bn_apply": (None, [_vp, _int, _int, _i64, _i64, _f32p, _f32p, _f32p, _int, _vp]),
        "mcl_bn_backward_sums": (_int, [_vp, _i64, _vp, _int, _int, _i64, _i64, _f32p, _f32p, _f32p, _int, _f64p,
                                        _f64p]),
        "mcl_bn_backward_input": (None, [_vp, _i64, _vp, _int, _int, _i64, _i64, _f32p, _f32p, _f32p, _int, _f32p,
                                         _f32p, _f32p, _vp]),
        "mcl_max_pool": (None, [_f32p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _f32p, _u8p]),
        "mcl_max_pool_backward": (None, [_f32p, _u8p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _f32p]),
        "mcl_bn_stats_nchw": (None, [_f32p, _i64, _i64, _i64, _f64p, _f64p]),
        "mcl_bn_apply_nchw": (None, [_f32p, _i64, _i64, _i64, _f32p, _f32p, _f32p, ctypes.c_int, _f32p]),
        "mcl_bn_backward_sums_nchw": (None, [_f32p, _i64, _f32p, _i64, _i64, _i64, _f32p, _f32p, _f32p,
                                             ctypes.c_int, _f64p, _f64p]),
        "mcl_bn_backward_input_nchw": (None, [_f32p, _i64, _f32p, _i64, _i64, _i64, _f32p, _f32p, _f32p,
                                              ctypes.c_int, _f32p, _f32p, _f32p, _f32p]),
        "mcl_max_pool_nchw": (None, [_f32p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _f32p, _u8p]),
        "mcl_max_pool_backward_nchw": (None, [_f32p, _u8p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _f32p]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    return _lib


def reason() -> str:
    """Why load() gave None ('' when it loaded or was not tried)."""
    return _reason


def _p(t: torch.Tensor, kind=_f32p):
    return ctypes.cast(t.data_ptr(), kind)


def _layout(x: torch.Tensor, bf16: bool = False) -> str | None:
    """"nchw" or "cl" (channels-last), the dense float32 CPU maps the kernels take (and, with `bf16`, the
    channels-last bfloat16 ones the chain takes); else None."""
    if x.dim() != 4 or x.device.type != "cpu" or x.dtype not in ((torch.float32, torch.bfloat16) if bf16
                                                                  else (torch.float32,)):
        return None
    if x.dtype == torch.float32 and x.is_contiguous():
        return "nchw"
    return "cl" if x.is_contiguous(memory_format=torch.channels_last) else None


def _like(dy: torch.Tensor, layout: str) -> torch.Tensor:
    return dy.contiguous(memory_format=torch.channels_last) if layout == "cl" else dy.contiguous()


def _rows(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[0] * x.shape[2] * x.shape[3], x.shape[1]


class _Chain(torch.autograd.Function):
    """y = max((x - mean) * invstd * gamma + beta, 0) with the batch's mean and biased variance."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps: float, relu: bool, out_bf16: bool):
        lib, layout = _lib, _layout(x, bf16=True)
        x16 = int(x.dtype == torch.bfloat16)
        y16 = int(x16 and out_bf16)
        m, c = _rows(x)
        n, hw = x.shape[0], x.shape[2] * x.shape[3]
        s = torch.empty(c, dtype=torch.float64)
        q = torch.empty(c, dtype=torch.float64)
        if layout == "nchw":
            lib.mcl_bn_stats_nchw(_p(x), n, c, hw, _p(s, _f64p), _p(q, _f64p))
        elif lib.mcl_bn_stats(x.data_ptr(), x16, m, c, _p(s, _f64p), _p(q, _f64p)):
            raise MemoryError("mcl_bn_stats")
        mean64 = s / m
        var64 = (q / m - mean64 * mean64).clamp_(min=0.0)
        invstd64 = (var64 + eps).rsqrt()
        g64 = gamma.detach().double() if gamma is not None else torch.ones(c, dtype=torch.float64)
        a = (invstd64 * g64).float()
        b = beta.detach().float().contiguous() if beta is not None else torch.zeros(c)
        mean = mean64.float()
        y = torch.empty_like(x, dtype=torch.bfloat16 if y16 else torch.float32)  # (the same layout)
        if layout == "nchw":
            lib.mcl_bn_apply_nchw(_p(x), n, c, hw, _p(mean), _p(a), _p(b), int(relu), _p(y))
        else:
            lib.mcl_bn_apply(x.data_ptr(), x16, y16, m, c, _p(mean), _p(a), _p(b), int(relu), y.data_ptr())
        ctx.save_for_backward(x, mean, a, b, invstd64, g64)
        ctx.relu, ctx.m, ctx.layout, ctx.x16, ctx.y16 = relu, m, layout, x16, y16
        ctx.has_gamma, ctx.has_beta = gamma is not None, beta is not None
        ctx.mark_non_differentiable(mean64, var64)
        return y, mean64, var64

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        lib = _lib
        x, mean, a, b, invstd64, g64 = ctx.saved_tensors
        m, c = _rows(x)
        n, _, h, w = x.shape
        layout, hw, x16, y16 = ctx.layout, h * w, ctx.x16, ctx.y16
        want = torch.bfloat16 if y16 else torch.float32  # (y's dtype: its gradient's, as a rule)
        dy = dy if dy.dtype == want else dy.to(want)
        if dy.dim() == 4 and hw > 1 and dy.stride(2) == 0 and dy.stride(3) == 0:
            dy, rep = dy[:, :, 0, 0].contiguous(), hw  # one value per image and channel (a global pooling's)
        else:
            dy, rep = _like(dy, layout), 1
        s1 = torch.empty(c, dtype=torch.float64)
        s2 = torch.empty(c, dtype=torch.float64)
        if layout == "nchw":
            lib.mcl_bn_backward_sums_nchw(_p(dy), rep, _p(x), n, c, hw, _p(mean), _p(a), _p(b), int(ctx.relu),
                                          _p(s1, _f64p), _p(s2, _f64p))
        elif lib.mcl_bn_backward_sums(dy.data_ptr(), rep, x.data_ptr(), x16, y16, m, c, _p(mean), _p(a), _p(b),
                                      int(ctx.relu), _p(s1, _f64p), _p(s2, _f64p)):
            raise MemoryError("mcl_bn_backward_sums")
        # dx = gamma * invstd * (g - s1 / m - (x - mean) * invstd^2 * s2 / m): METHOD's BatchNorm, Scale
        # and ReLU differentiated as one function of x (the Scale's gradients are s2 * invstd and s1).
        k = g64 * invstd64
        ka = k.float()
        kb = (-k * invstd64 * invstd64 * s2 / m).float()
        kc = (-k * s1 / m).float()
        dx = torch.empty_like(x)  # (x's dtype: bfloat16 where x is)
        if layout == "nchw":
            lib.mcl_bn_backward_input_nchw(_p(dy), rep, _p(x), n, c, hw, _p(mean), _p(a), _p(b), int(ctx.relu),
                                           _p(ka), _p(kb), _p(kc), _p(dx))
        else:
            lib.mcl_bn_backward_input(dy.data_ptr(), rep, x.data_ptr(), x16, y16, m, c, _p(mean), _p(a), _p(b),
                                      int(ctx.relu), _p(ka), _p(kb), _p(kc), dx.data_ptr())
        dgamma = (s2 * invstd64).float() if ctx.has_gamma else None
        dbeta = s1.float() if ctx.has_beta else None
        return dx, dgamma, dbeta, None, None, None


def chain(bn, x: torch.Tensor, weight, bias, relu: bool, out_bf16: bool = False):
    """BatchNorm `bn` (batch statistics), then Scale (weight, bias) and ReLU, as one kernel; the BatchNorm's
    blobs move as in BatchNorm.native (mean, and the variance m/(m-1)-corrected). The output is float32, or
    bfloat16 where x is and `out_bf16` (its readers are convolutions under bfloat16 autocast). None where it
    does not apply (the caller's path then runs)."""
    if (_lib is None or bn.use_global_stats or _layout(x, bf16=True) is None or _rows(x)[0] < 2
            or (weight is not None and weight.dtype != torch.float32)):
        return None
    y, mean, var = _Chain.apply(x, weight, bias, float(bn.eps), bool(relu), bool(out_bf16))
    m = _rows(x)[0]
    with torch.no_grad():
        bn.factor.mul_(bn.maf).add_(1.0)
        bn.mean_sum.mul_(bn.maf).add_(mean.float())
        bn.var_sum.mul_(bn.maf).add_((var * (m / (m - 1))).float())
    return y


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kh: int, kw: int, oh: int, ow: int):
        n, c, h, w = x.shape
        layout = _layout(x)
        fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
        y = torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=fmt)
        arg = torch.empty(n * c * oh * ow, dtype=torch.uint8)
        if layout == "cl":
            _lib.mcl_max_pool(_p(x), n, h, w, c, kh, kw, oh, ow, _p(y), _p(arg, _u8p))
        else:
            _lib.mcl_max_pool_nchw(_p(x), n * c, h, w, kh, kw, oh, ow, _p(y), _p(arg, _u8p))
        ctx.save_for_backward(arg)
        ctx.dims, ctx.layout, ctx.fmt = (n, h, w, c, kh, kw, oh, ow), layout, fmt
        return y

    @staticmethod
    def backward(ctx, dy):
        (arg,) = ctx.saved_tensors
        n, h, w, c, kh, kw, oh, ow = ctx.dims
        dy = _like(dy, ctx.layout)
        dx = torch.empty((n, c, h, w), dtype=dy.dtype, memory_format=ctx.fmt)
        if ctx.layout == "cl":
            _lib.mcl_max_pool_backward(_p(dy), _p(arg, _u8p), n, h, w, c, kh, kw, oh, ow, _p(dx))
        else:
            _lib.mcl_max_pool_backward_nchw(_p(dy), _p(arg, _u8p), n * c, h, w, kh, kw, oh, ow, _p(dx))
        return dx, None, None, None, None


class _GlobalMean(torch.autograd.Function):
    """A global average pooling whose gradient stays one value per image and channel (a stride-0 view), so
    the chain before it reads it as such (_Chain.backward's rep) instead of a map of copies."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.mean(dim=(2, 3), keepdim=True)

    @staticmethod
    def backward(ctx, dy):
        n, c, h, w = ctx.shape
        return (dy / float(h * w)).expand(n, c, h, w)


def pool(layer, x: torch.Tensor):
    """A Pooling layer (mcl.torchnet Pooling, set up) on a channels-last x: MAX with its stride equal to its
    kernel and no padding, or global AVE; None where it does not apply (the layer's own path then)."""
    if _lib is None or _layout(x) is None:
        return None
    if layer.glob and not layer.max:
        return _GlobalMean.apply(x)
    if (not layer.max or layer.glob or any(layer.pad) or tuple(layer.stride) != tuple(layer.kernel)
            or layer.kernel[0] * layer.kernel[1] > 255):
        return None
    kh, kw = layer.kernel
    oh, ow = layer.out
    if oh > -(-x.shape[2] // kh) or ow > -(-x.shape[3] // kw):
        return None  # (a window wholly outside the map: Caffe's clip keeps none without padding)
    return _MaxPool.apply(x, kh, kw, oh, ow)
