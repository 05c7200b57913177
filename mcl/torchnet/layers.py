"""Caffe's layers as torch.nn.Modules, each with Caffe's numerics.

Each layer follows Caffe's own source (src/caffe/layers/*.cpp); the comments name
what is reproduced. setup(bottom shapes) creates a layer's blobs with Caffe's fillers
and returns its top shapes (LayerSetUp + Reshape); forward runs it.

Learnable blobs are nn.Parameters named `weight` / `bias` of the layer's
module (Scale: `weight` is the scale, `bias` its bias). BatchNorm's three blobs
are buffers `mean_sum`, `var_sum`, `factor` (never learned, as in Caffe).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcl.caffe.proto import caffe_pb2
from mcl.torchnet.spec import LayerSpec, NetError

# ---- Caffe's parameter conventions --------------------------------------------------

def _hw(p, plain: str, default: int) -> tuple[int, int]:
    """(h, w) of a conv/pool setting given as `x` (repeated or not) or `x_h` + `x_w`."""
    base = plain.replace("_size", "")
    if p.HasField(f"{base}_h") or p.HasField(f"{base}_w"):
        return int(getattr(p, f"{base}_h")), int(getattr(p, f"{base}_w"))
    v = getattr(p, plain)
    if isinstance(v, int):
        return (v, v) if p.HasField(plain) else (default, default)
    v = list(v)
    if not v:
        return default, default
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _canonical(axis: int, ndim: int, name: str) -> int:
    if not -ndim <= axis < ndim:
        raise NetError(f"layer {name!r}: axis {axis} out of range for a {ndim}-axis blob")
    return axis % ndim


def _fill(shape, filler, generator) -> torch.Tensor:
    """Caffe's fillers (include/caffe/filler.hpp), drawn from torch's generator (not Caffe's RNG)."""
    t = torch.empty(shape, dtype=torch.float32)
    kind = filler.type if filler is not None else "constant"
    count = int(np.prod(shape)) if len(shape) else 1
    fan_in = count // shape[0] if len(shape) else 1
    fan_out = count // shape[1] if len(shape) > 1 else count

    def fan(v):
        norm = caffe_pb2.FillerParameter
        if filler.variance_norm == norm.AVERAGE:
            return (fan_in + fan_out) / 2.0
        return float(fan_out if filler.variance_norm == norm.FAN_OUT else fan_in)

    if kind == "constant":
        return t.fill_(filler.value if filler is not None else 0.0)
    if kind == "gaussian":
        return t.normal_(filler.mean, filler.std, generator=generator)
    if kind == "uniform":
        return t.uniform_(filler.min, filler.max, generator=generator)
    if kind == "xavier":
        s = math.sqrt(3.0 / fan(None))
        return t.uniform_(-s, s, generator=generator)
    if kind == "msra":
        return t.normal_(0.0, math.sqrt(2.0 / fan(None)), generator=generator)
    raise NetError(f"filler {kind!r} is not supported")


# ---- layers -------------------------------------------------------------------------

class Layer(nn.Module):
    """One Caffe layer: setup(bottom shapes) creates its blobs and returns top shapes (LayerSetUp + Reshape)."""
    blob_names: tuple[str, ...] = ()

    def __init__(self, spec: LayerSpec, phase: str):
        super().__init__()
        self.spec = spec
        self.phase = phase

    @property
    def lname(self) -> str:
        return self.spec.name

    def fail(self, what: str):
        raise NetError(f"layer {self.lname!r} ({self.spec.type}): {what}")

    def setup(self, shapes, generator):
        raise NotImplementedError

    def _new_param(self, name, shape, filler, generator):
        self.register_parameter(name, nn.Parameter(_fill(tuple(shape), filler, generator)))

    def blobs(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self.blob_names]


class Convolution(Layer):
    # conv_layer.cpp / base_conv_layer.cpp: weight (num_output, C/group, kh, kw), bias (num_output,).
    def setup(self, shapes, generator):
        p = self.spec.param.convolution_param
        (shape,) = self._one(shapes)
        if len(shape) != 4:
            self.fail(f"needs a 4-axis bottom (N, C, H, W), got {shape}")
        if p.axis != 1:
            self.fail("only axis 1 is supported")
        self.kernel = _hw(p, "kernel_size", 0)
        if min(self.kernel) <= 0:
            self.fail("kernel size missing or zero")
        self.pad = _hw(p, "pad", 0)
        self.stride = _hw(p, "stride", 1)
        dil = list(p.dilation) or [1]
        self.dilation = (dil[0], dil[-1])
        self.group = p.group
        if shape[1] % self.group or p.num_output % self.group:
            self.fail(f"group {self.group} does not divide channels {shape[1]} / num_output {p.num_output}")
        self.blob_names = ("weight", "bias") if p.bias_term else ("weight",)
        self._new_param("weight", (p.num_output, shape[1] // self.group, *self.kernel),
                        p.weight_filler, generator)
        if p.bias_term:
            self._new_param("bias", (p.num_output,), p.bias_filler, generator)
        out = [(shape[i + 2] + 2 * self.pad[i] - (self.dilation[i] * (self.kernel[i] - 1) + 1)) // self.stride[i] + 1
               for i in range(2)]
        return [(shape[0], p.num_output, *out)]

    def _one(self, shapes):
        if len(shapes) != 1:
            self.fail(f"takes one bottom, got {len(shapes)}")
        return shapes

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias if len(self.blob_names) > 1 else None,
                        self.stride, self.pad, self.dilation, self.group)


class InnerProduct(Layer):
    # inner_product_layer.cpp: the bottom flattened from `axis` (C, H, W order) to K; weight (N, K) or (K, N).
    def setup(self, shapes, generator):
        p = self.spec.param.inner_product_param
        if len(shapes) != 1:
            self.fail(f"takes one bottom, got {len(shapes)}")
        shape = shapes[0]
        self.axis = _canonical(p.axis, len(shape), self.lname)
        k = int(np.prod(shape[self.axis:]))
        self.transpose = p.transpose
        self.blob_names = ("weight", "bias") if p.bias_term else ("weight",)
        self._new_param("weight", (k, p.num_output) if p.transpose else (p.num_output, k), p.weight_filler, generator)
        if p.bias_term:
            self._new_param("bias", (p.num_output,), p.bias_filler, generator)
        return [tuple(shape[:self.axis]) + (p.num_output,)]

    def forward(self, x):
        x = x.flatten(self.axis)
        w = self.weight.t() if self.transpose else self.weight
        return F.linear(x, w, self.bias if len(self.blob_names) > 1 else None)


class BatchNorm(Layer):
    """batch_norm_layer.cpp: blobs mean-sum, var-sum and the scalar factor s.

    Stored statistics: mean = blob0 / s, var = blob1 / s, and 0 for both when
    s == 0 (Caffe's own rule: an untrained layer normalises by sqrt(eps) alone).
    Batch statistics (TRAIN unless use_global_stats): the biased variance over
    all axes but 1, and the blobs move: s = s * maf + 1, blob0 = blob0 * maf + mean,
    blob1 = blob1 * maf + m / (m - 1) * var with m = count / channels.
    """
    blob_names = ("mean_sum", "var_sum", "factor")

    def setup(self, shapes, generator):
        p = self.spec.param.batch_norm_param
        if len(shapes) != 1:
            self.fail(f"takes one bottom, got {len(shapes)}")
        shape = shapes[0]
        for i, lr in enumerate(self.spec.lr_mults):
            if lr != 0:
                self.fail(f"param {i} has lr_mult {lr}: Caffe refuses to learn BatchNorm statistics")
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else self.phase == "TEST"
        self.maf = p.moving_average_fraction
        self.eps = p.eps
        c = 1 if len(shape) == 1 else shape[1]
        self.register_buffer("mean_sum", torch.zeros(c))
        self.register_buffer("var_sum", torch.zeros(c))
        self.register_buffer("factor", torch.zeros(1))
        return [tuple(shape)]

    frozen = False

    def freeze(self) -> None:
        """Keep mean and var as tensors of their own (an exported graph then holds constants)."""
        mean, var = self.stored_stats()
        self.register_buffer("frozen_mean", mean.detach().clone(), persistent=False)
        self.register_buffer("frozen_var", var.detach().clone(), persistent=False)
        self.frozen = True

    def stored_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) from the blobs: blob / s, and 0 where s == 0."""
        s = self.factor[0]
        inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        return self.mean_sum * inv, self.var_sum * inv

    def _view(self, v, x):
        return v.view((1, -1) + (1,) * (x.dim() - 2)) if x.dim() > 1 else v

    def native(self, x, weight=None, bias=None):
        """PyTorch's fused batch_norm kernels (forward and backward, several times faster in
        training), with an optional Scale (weight, bias over axis 1) folded in. With momentum 1
        its running buffers receive the batch mean and the m/(m-1)-corrected variance, which
        Caffe's running sums take in. A bfloat16 input (the engine's bf16 autocast) is cast to
        float32 first: the statistics and the blobs stay float32."""
        if x.dtype == torch.bfloat16:
            x = x.float()
        if self.use_global_stats:
            mean, var = (self.frozen_mean, self.frozen_var) if self.frozen else self.stored_stats()
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        batch_mean, batch_var = torch.zeros_like(self.mean_sum), torch.zeros_like(self.var_sum)
        y = F.batch_norm(x, batch_mean, batch_var, weight, bias, True, 1.0, self.eps)
        with torch.no_grad():
            self.factor.mul_(self.maf).add_(1.0)
            self.mean_sum.mul_(self.maf).add_(batch_mean)
            self.var_sum.mul_(self.maf).add_(batch_var)
        return y

    def forward(self, x):
        if x.dtype == torch.bfloat16:  # bf16 autocast: statistics in float32 (native())
            x = x.float()
        if x.dim() >= 2 and (self.use_global_stats or x.numel() > x.shape[1]):
            return self.native(x)
        if self.use_global_stats:
            mean, var = (self.frozen_mean, self.frozen_var) if self.frozen else self.stored_stats()
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims)
            var = ((x - self._view(mean, x)) ** 2).mean(dim=dims)
            with torch.no_grad():
                m = x.numel() // mean.numel()
                correction = m / (m - 1) if m > 1 else 1.0
                self.factor.mul_(self.maf).add_(1.0)
                self.mean_sum.mul_(self.maf).add_(mean.detach())
                self.var_sum.mul_(self.maf).add_(var.detach() * correction)
        return (x - self._view(mean, x)) / torch.sqrt(self._view(var, x) + self.eps)


def _broadcast(v: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    return v.reshape((1,) * axis + tuple(v.shape) + (1,) * (ndim - axis - v.dim()))


class Scale(Layer):
    """scale_layer.cpp: bottom0 times a learned blob (one bottom) or times bottom1 (two bottoms),
    broadcast from `axis`; plus a learned bias (bias_term)."""

    def setup(self, shapes, generator):
        p = self.spec.param.scale_param
        shape = shapes[0]
        if len(shapes) not in (1, 2):
            self.fail(f"takes one or two bottoms, got {len(shapes)}")
        if len(shapes) == 2:
            other = shapes[1]
            self.axis = 0 if len(other) == 0 else _canonical(p.axis, len(shape), self.lname)
            if tuple(shape[self.axis:self.axis + len(other)]) != tuple(other):
                self.fail(f"bottom shapes {shape} and {other} do not broadcast from axis {p.axis}")
            scale_shape = tuple(other)
            names = []
        else:
            self.axis = _canonical(p.axis, len(shape), self.lname) if len(shape) else 0
            if p.num_axes < -1:
                self.fail("num_axes must be -1 or more")
            end = len(shape) if p.num_axes == -1 else self.axis + p.num_axes
            if end > len(shape):
                self.fail(f"scale blob extends past the bottom's {len(shape)} axes")
            scale_shape = tuple(shape[self.axis:end])
            if len(scale_shape) == 0:
                self.axis = 0
            filler = p.filler if p.HasField("filler") else None
            if filler is None:
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            self._new_param("weight", scale_shape, filler, generator)
            names = ["weight"]
        if p.bias_term:
            self._new_param("bias", scale_shape, p.bias_filler, generator)
            names.append("bias")
        self.blob_names = tuple(names)
        self.two_bottoms = len(shapes) == 2
        return [tuple(shape)]

    def forward(self, x, *other):
        s = other[0] if self.two_bottoms else self.weight
        y = x * _broadcast(s, self.axis, x.dim())
        if "bias" in self.blob_names:
            y = y + _broadcast(self.bias, self.axis, x.dim())
        return y


class ReLU(Layer):
    def setup(self, shapes, generator):
        self.slope = self.spec.param.relu_param.negative_slope
        return [tuple(shapes[0])]

    def forward(self, x):
        return F.leaky_relu(x, self.slope) if self.slope else F.relu(x)


class Pooling(Layer):
    """pooling_layer.cpp: ceil rounding (default) and its clip that keeps the last window
    starting inside the padded input (applied only when padded); AVE divides by the window
    clipped to the padded size; global_pooling takes the whole map."""

    def setup(self, shapes, generator):
        p = self.spec.param.pooling_param
        shape = shapes[0]
        if len(shape) != 4:
            self.fail(f"needs a 4-axis bottom (N, C, H, W), got {shape}")
        P = caffe_pb2.PoolingParameter
        if p.pool not in (P.MAX, P.AVE):
            self.fail(f"pool method {P.PoolMethod.Name(p.pool)} is not supported")
        self.max = p.pool == P.MAX
        self.glob = p.global_pooling
        H, W = shape[2], shape[3]
        if self.glob:
            self.kernel, self.pad, self.stride = (H, W), (0, 0), (1, 1)
        else:
            self.kernel = _hw(p, "kernel_size", 0)
            if min(self.kernel) <= 0:
                self.fail("kernel size missing or zero")
            self.pad = _hw(p, "pad", 0)
            self.stride = _hw(p, "stride", 1)
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            self.fail(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        ceil = p.round_mode == P.CEIL
        out = []
        for i, size in enumerate((H, W)):
            k, pd, s = self.kernel[i], self.pad[i], self.stride[i]
            n = (math.ceil if ceil else math.floor)((size + 2 * pd - k) / s) + 1
            if pd and (n - 1) * s >= size + pd:
                n -= 1
            out.append(int(n))
        self.out = tuple(out)
        # Does torch's own ceil/floor mode give the same windows (it clips also when unpadded)?
        self.native = all(
            self.pad[i] <= self.kernel[i] // 2 and self._torch_size((H, W)[i], i, ceil) == out[i] for i in range(2))
        self.ceil = ceil
        if not self.native and not self.max:
            div = []
            for i, size in enumerate((H, W)):
                k, pd, s = self.kernel[i], self.pad[i], self.stride[i]
                start = np.arange(out[i]) * s - pd
                div.append(np.minimum(start + k, size + pd) - start)
            self.register_buffer("divisor", torch.from_numpy(np.outer(div[0], div[1]).astype(np.float32)),
                                 persistent=False)
        return [(shape[0], shape[1], *out)]

    def _torch_size(self, size, i, ceil):
        k, pd, s = self.kernel[i], self.pad[i], self.stride[i]
        n = (math.ceil if ceil else math.floor)((size + 2 * pd - k) / s) + 1
        if ceil and (n - 1) * s >= size + pd:
            n -= 1
        return n

    def forward(self, x):
        if self.glob and not self.max:
            return x.mean(dim=(2, 3), keepdim=True)
        if self.glob:
            return x.amax(dim=(2, 3), keepdim=True)
        if self.native:
            if self.max:
                return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil)
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        H, W = x.shape[2], x.shape[3]
        extra = [(self.out[i] - 1) * self.stride[i] + self.kernel[i] - (H, W)[i] - self.pad[i] for i in range(2)]
        if self.max:
            xp = F.pad(x, (self.pad[1], extra[1], self.pad[0], extra[0]), value=-math.inf)
            return F.max_pool2d(xp, self.kernel, self.stride)
        xp = F.pad(x, (self.pad[1], extra[1], self.pad[0], extra[0]))
        total = F.avg_pool2d(xp, self.kernel, self.stride) * float(self.kernel[0] * self.kernel[1])
        return total / self.divisor


class InputLayer(Layer):
    def setup(self, shapes, generator):
        return shapes

    def forward(self, *xs):
        return xs


class Slice(Layer):
    def setup(self, shapes, generator):
        p = self.spec.param.slice_param
        shape = shapes[0]
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        self.axis = _canonical(axis, len(shape), self.lname)
        n = len(self.spec.tops)
        size = shape[self.axis]
        if len(p.slice_point):
            points = list(p.slice_point)
            if len(points) != n - 1 or points != sorted(points) or points[-1] >= size or points[0] <= 0:
                self.fail(f"slice points {points} do not cut axis size {size} into {n} tops")
            edges = [0] + points + [size]
        else:
            if size % n:
                self.fail(f"axis size {size} is not divisible by {n} tops")
            edges = [size // n * i for i in range(n + 1)]
        self.sizes = [b - a for a, b in zip(edges, edges[1:])]
        return [tuple(shape[:self.axis]) + (s,) + tuple(shape[self.axis + 1:]) for s in self.sizes]

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


class Reshape(Layer):
    # reshape_layer.cpp: dims replace axes [axis, axis + num_axes); 0 copies a bottom dim, -1 is inferred.
    def setup(self, shapes, generator):
        p = self.spec.param.reshape_param
        shape = list(shapes[0])
        start = p.axis if p.axis >= 0 else len(shape) + p.axis + 1
        end = len(shape) if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= end <= len(shape):
            self.fail(f"axis {p.axis} / num_axes {p.num_axes} out of range for {tuple(shape)}")
        dims = list(p.shape.dim)
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(shape):
                    self.fail(f"dim 0 at position {i} copies a bottom axis that does not exist")
                new.append(shape[start + i])
            else:
                new.append(d)
        if new.count(-1) > 1:
            self.fail("more than one -1 in the new shape")
        full = shape[:start] + new + shape[end:]
        count = int(np.prod(shape))
        if -1 in full:
            known = int(np.prod([d for d in full if d != -1]))
            if known == 0 or count % known:
                self.fail(f"cannot infer -1 reshaping {tuple(shape)} to {tuple(full)}")
            full[full.index(-1)] = count // known
        if int(np.prod(full)) != count:
            self.fail(f"cannot reshape {tuple(shape)} to {tuple(full)}")
        self.start, self.end, self.new = start, end, [d for d in full[start:len(full) - (len(shape) - end)]]
        return [tuple(full)]

    def forward(self, x):
        return x.reshape(tuple(x.shape[:self.start]) + tuple(self.new) + tuple(x.shape[self.end:]))


class Flatten(Layer):
    def setup(self, shapes, generator):
        p = self.spec.param.flatten_param
        shape = shapes[0]
        self.start = _canonical(p.axis, len(shape), self.lname)
        self.end = _canonical(p.end_axis, len(shape), self.lname)
        return [tuple(shape[:self.start]) + (int(np.prod(shape[self.start:self.end + 1])),) + tuple(shape[self.end + 1:])]

    def forward(self, x):
        return x.flatten(self.start, self.end)


class Split(Layer):
    def setup(self, shapes, generator):
        return [tuple(shapes[0])] * len(self.spec.tops)

    def forward(self, x):
        return (x,) * len(self.spec.tops)


class Concat(Layer):
    def setup(self, shapes, generator):
        p = self.spec.param.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = _canonical(axis, len(shapes[0]), self.lname)
        for s in shapes[1:]:
            if len(s) != len(shapes[0]) or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != self.axis):
                self.fail(f"bottom shapes {shapes} differ outside axis {self.axis}")
        out = list(shapes[0])
        out[self.axis] = sum(s[self.axis] for s in shapes)
        return [tuple(out)]

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


class Eltwise(Layer):
    def setup(self, shapes, generator):
        p = self.spec.param.eltwise_param
        self.op = p.operation
        self.coeff = list(p.coeff) or [1.0] * len(shapes)
        if len(self.coeff) != len(shapes):
            self.fail(f"{len(self.coeff)} coefficients for {len(shapes)} bottoms")
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            self.fail(f"bottom shapes differ: {shapes}")
        return [tuple(shapes[0])]

    def forward(self, *xs):
        E = caffe_pb2.EltwiseParameter
        if self.op == E.PROD:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        if self.op == E.MAX:
            y = xs[0]
            for x in xs[1:]:
                y = torch.maximum(y, x)
            return y
        y = xs[0] * self.coeff[0] if self.coeff[0] != 1 else xs[0]
        for c, x in zip(self.coeff[1:], xs[1:]):
            y = y + (x * c if c != 1 else x)
        return y


class EuclideanLoss(Layer):
    # euclidean_loss_layer.cpp: sum(diff^2) / num / 2, a scalar top.
    def setup(self, shapes, generator):
        if len(shapes) != 2:
            self.fail(f"takes two bottoms, got {len(shapes)}")
        if int(np.prod(shapes[0][1:])) != int(np.prod(shapes[1][1:])) or shapes[0][0] != shapes[1][0]:
            self.fail(f"bottom shapes {shapes[0]} and {shapes[1]} differ")
        return [()]

    def forward(self, a, b):
        if a.dtype == torch.bfloat16 or b.dtype == torch.bfloat16:  # bf16 autocast: the loss in float32
            a, b = a.float(), b.float()
        d = a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1)
        return (d * d).sum() / a.shape[0] / 2.0


class Dropout(Layer):
    def setup(self, shapes, generator):
        self.ratio = self.spec.param.dropout_param.dropout_ratio
        return [tuple(shapes[0])]

    def forward(self, x):
        # dropout_layer.cpp scales kept units by 1/(1-ratio) in TRAIN and passes TEST through.
        return F.dropout(x, self.ratio, training=True) if self.phase == "TRAIN" else x


class Silence(Layer):
    def setup(self, shapes, generator):
        return []

    def forward(self, *xs):
        return ()


LAYERS = {
    "Input": InputLayer, "HDF5Data": InputLayer, "Data": InputLayer,
    "Convolution": Convolution, "InnerProduct": InnerProduct, "BatchNorm": BatchNorm, "Scale": Scale,
    "ReLU": ReLU, "Pooling": Pooling, "Slice": Slice, "Reshape": Reshape, "Flatten": Flatten,
    "Split": Split, "Concat": Concat, "Eltwise": Eltwise, "EuclideanLoss": EuclideanLoss,
    "Dropout": Dropout, "Silence": Silence,
}

