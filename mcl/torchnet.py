"""A Caffe NetParameter as a torch.nn.Module with Caffe's numerics.

One module serves the port (deploy nets -> PyTorch / ONNX) and training in
PyTorch (train nets, with Caffe's phase rules, loss weights, lr/decay
multipliers and BatchNorm's running statistics). Each layer follows Caffe's
own source (src/caffe/layers/*.cpp); the comments name what is reproduced.

Data layers (Input, HDF5Data, Data, the V1 net-level `input`) become external
inputs fed by top name. Data's transform_param is not applied: feed tensors
already transformed ((p - mean) * scale), as the HDF5 files already are.

Learnable blobs are nn.Parameters named `weight` / `bias` of the layer's
module (Scale: `weight` is the scale, `bias` its bias). BatchNorm's three blobs
are buffers `mean_sum`, `var_sum`, `factor` (never learned, as in Caffe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcl.caffe.proto import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
INPUT_TYPES = ("Input", "HDF5Data", "Data")

# V1 (`layers`) type enum -> V2 type string, as Caffe's UpgradeV1LayerType does for the types we run.
V1_TYPES = {
    "CONVOLUTION": "Convolution", "POOLING": "Pooling", "RELU": "ReLU", "INNER_PRODUCT": "InnerProduct",
    "DATA": "Data", "HDF5_DATA": "HDF5Data", "EUCLIDEAN_LOSS": "EuclideanLoss", "SLICE": "Slice",
    "SPLIT": "Split", "FLATTEN": "Flatten", "CONCAT": "Concat", "ELTWISE": "Eltwise", "DROPOUT": "Dropout",
    "SILENCE": "Silence",
}


class NetError(ValueError):
    """A net or its blobs that cannot be run: names the layer and what is wrong."""


# ---- net description -----------------------------------------------------------

@dataclass
class LayerSpec:
    """What the module needs of one Caffe layer, from a V2 `layer` or a V1 `layers` entry."""
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: object  # the LayerParameter / V1LayerParameter message
    lr_mults: list[float] = field(default_factory=list)
    decay_mults: list[float] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)


def _state_meets_rule(rule, phase) -> bool:
    # Net::StateMeetsRule with level 0 and no stages.
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    return not len(rule.stage)


def _included(layer, phase) -> bool:
    # Net::FilterNet: include rules win when present, otherwise any matching exclude removes the layer.
    if len(layer.include):
        return any(_state_meets_rule(r, phase) for r in layer.include)
    return not any(_state_meets_rule(r, phase) for r in layer.exclude)


def layer_specs(net_param, phase: str = "TEST") -> list[LayerSpec]:
    """The net's layers for `phase` (V2 `layer` or V1 `layers`), the net-level `input` as an Input layer."""
    if phase not in PHASES:
        raise NetError(f"phase must be TRAIN or TEST, got {phase!r}")
    ph = PHASES[phase]
    if len(net_param.layer) and len(net_param.layers):
        raise NetError("net has both `layer` and V1 `layers` fields")
    specs = []
    if len(net_param.input):
        specs.append(LayerSpec("input", "Input", [], list(net_param.input), None))
    for lay in net_param.layer:
        if not _included(lay, ph):
            continue
        specs.append(LayerSpec(lay.name, lay.type, list(lay.bottom), list(lay.top), lay,
                               [p.lr_mult for p in lay.param], [p.decay_mult for p in lay.param],
                               list(lay.loss_weight)))
    for lay in net_param.layers:
        if not _included(lay, ph):
            continue
        enum = caffe_pb2.V1LayerParameter.LayerType.Name(lay.type)
        if enum not in V1_TYPES:
            raise NetError(f"layer {lay.name!r}: V1 layer type {enum} is not supported")
        specs.append(LayerSpec(lay.name, V1_TYPES[enum], list(lay.bottom), list(lay.top), lay,
                               list(lay.blobs_lr), list(lay.weight_decay), list(lay.loss_weight)))
    return specs


def _net_input_shapes(net_param) -> dict[str, tuple[int, ...]]:
    """Shapes of the deprecated net-level inputs (`input_shape` or 4 x `input_dim` each)."""
    shapes = {}
    names = list(net_param.input)
    if len(net_param.input_shape):
        for name, s in zip(names, net_param.input_shape):
            shapes[name] = tuple(s.dim)
    elif len(net_param.input_dim):
        dims = list(net_param.input_dim)
        for i, name in enumerate(names):
            shapes[name] = tuple(dims[4 * i: 4 * i + 4])
    return shapes


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

    def _native(self, x, weight=None, bias=None):
        """PyTorch's fused batch_norm kernels (forward and backward, several times faster in
        training), with an optional Scale folded in. With momentum 1 its running buffers receive
        the batch mean and the m/(m-1)-corrected variance, which Caffe's running sums take in."""
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

    def fused(self, x, weight, bias, relu: bool):
        """This layer, then Scale(weight, bias) over axis 1, then ReLU if `relu`, in one kernel.

        The same arithmetic as forward() followed by Scale and ReLU, rounded once per element
        instead of after each layer; the statistics blobs move exactly as in forward().
        """
        y = self._native(x, weight, bias)
        # In place: batch_norm keeps its input for the backward pass, not its output.
        return F.relu_(y) if relu else y

    def forward(self, x):
        if x.dim() >= 2 and (self.use_global_stats or x.numel() > x.shape[1]):
            return self._native(x)
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


# ---- the net ------------------------------------------------------------------------

def _module_key(name: str) -> str:
    return name.replace(".", "_") or "_"


class CaffeNet(nn.Module):
    """A Caffe net for one phase; forward(dict of input tops) -> dict of every top."""

    def __init__(self, specs: list[LayerSpec], phase: str, input_shapes: dict[str, tuple[int, ...]],
                 seed: int = 0):
        super().__init__()
        self.phase = phase
        self.specs = specs
        self.layer_names = [s.name for s in specs]
        if len(set(self.layer_names)) != len(self.layer_names):
            dup = sorted({n for n in self.layer_names if self.layer_names.count(n) > 1})
            raise NetError(f"layer names repeat: {', '.join(dup)}")
        self.input_names = [t for s in specs if s.type in INPUT_TYPES for t in s.tops]
        self.input_layer_names = {s.name for s in specs if s.type in INPUT_TYPES}
        self.layers = nn.ModuleDict()
        self._keys = {}
        for s in specs:
            if s.type not in LAYERS:
                raise NetError(f"layer {s.name!r}: type {s.type!r} is not supported "
                               f"(supported: {', '.join(sorted(LAYERS))})")
            key = _module_key(s.name)
            while key in self.layers:
                key += "_"
            self._keys[s.name] = key
            self.layers[key] = LAYERS[s.type](s, phase)
        self.loss_weights = {}
        for s in specs:
            weights = list(s.loss_weights)
            if not weights and s.type.endswith("Loss"):
                weights = [1.0]
            for top, w in zip(s.tops, weights):
                self.loss_weights[top] = float(w)
        self.input_shapes = dict(input_shapes)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.is_setup = False
        self._seed = seed
        if all(n in self.input_shapes for n in self.input_names):
            self.setup(self.input_shapes)

    def layer(self, name: str) -> Layer:
        if name not in self._keys:
            raise NetError(f"no layer named {name!r}")
        return self.layers[self._keys[name]]

    def setup(self, input_shapes: dict[str, tuple[int, ...]]) -> None:
        """Create every blob with Caffe's fillers and infer every top's shape (Net::Init)."""
        missing = [n for n in self.input_names if n not in input_shapes]
        if missing:
            raise NetError(f"input shapes missing for {', '.join(missing)}")
        gen = torch.Generator().manual_seed(self._seed)
        shapes = {n: tuple(int(d) for d in input_shapes[n]) for n in self.input_names}
        for s in self.specs:
            if s.type in INPUT_TYPES:
                continue
            for b in s.bottoms:
                if b not in shapes:
                    raise NetError(f"layer {s.name!r} ({s.type}): unknown bottom blob {b!r}")
            mod = self.layer(s.name)
            tops = mod.setup([shapes[b] for b in s.bottoms], gen)
            if len(tops) != len(s.tops):
                raise NetError(f"layer {s.name!r} ({s.type}): makes {len(tops)} tops, the net names {len(s.tops)}")
            for t, shp in zip(s.tops, tops):
                shapes[t] = tuple(shp)
            for i, pname in enumerate(mod.blob_names if s.type != "BatchNorm" else ()):
                lr = s.lr_mults[i] if i < len(s.lr_mults) else 1.0
                # Caffe computes no gradient for a blob with lr_mult 0 (Net::AppendParam).
                getattr(mod, pname).requires_grad_(lr != 0)
        self.shapes = shapes
        self.input_shapes = {n: shapes[n] for n in self.input_names}
        self.is_setup = True

    def _need_setup(self, what: str):
        if not self.is_setup:
            raise NetError(f"{what}: the net's blob shapes are unknown until it knows its input shapes "
                           f"({', '.join(self.input_names)}): pass input_shapes or call setup()")

    def forward(self, inputs: dict[str, torch.Tensor], upto: str | None = None,
                record: list | None = None) -> dict[str, torch.Tensor]:
        """Every blob by top name (an in-place top: its last value), up to and including layer `upto`.

        `record`, if given, receives (layer, top, value) after every layer: the values of
        in-place tops as each layer leaves them, as Caffe's net.forward(end=layer) shows them.
        """
        if not self.is_setup:
            self.setup({n: tuple(inputs[n].shape) for n in self.input_names if n in inputs})
        if upto is not None and upto not in self._keys:
            raise NetError(f"no layer named {upto!r}")
        blobs = {}
        for n in self.input_names:
            if n not in inputs:
                raise NetError(f"input {n!r} not given (inputs: {', '.join(self.input_names)})")
            blobs[n] = inputs[n]
        if self._plan is not None and upto is None and record is None:
            for name, value in inputs.items():  # blobs of skipped layers, computed elsewhere
                blobs.setdefault(name, value)
            return self._run_plan(blobs)
        for s in self.specs:
            if s.type not in INPUT_TYPES:
                out = self.layers[self._keys[s.name]](*[blobs[b] for b in s.bottoms])
                if isinstance(out, torch.Tensor):
                    out = (out,)
                for t, v in zip(s.tops, out):
                    blobs[t] = v
                    if record is not None:
                        record.append((s.name, t, v))
            if s.name == upto:
                break
        return blobs

    def fuse(self) -> CaffeNet:
        """Train faster: each BatchNorm -> Scale (-> ReLU) chain as one fused kernel, each Eq. 4
        group of sliced EuclideanLoss layers as one reduction (_loss_groups; its losses as one
        vector through loss_vector()).

        A chain qualifies when the Scale (one bottom, a learned scale of shape (C,) on axis 1)
        reads only the BatchNorm's top and comes right after it, and a ReLU (slope 0) right
        after that works in place on the Scale's top; and no other layer reads a blob the
        chain overwrites. The layers keep their blobs; forward() with `upto` or `record`
        still runs layer by layer. Undone by unfuse().
        """
        self._need_setup("fuse")
        groups = self._loss_groups()
        grouped = {id(s): g for g in groups for s in g["members"]}
        plan, i, specs = [], 0, self.specs
        while i < len(specs):
            s = specs[i]
            if id(s) in grouped:
                g = grouped[id(s)]
                if s is g["losses"][0]:
                    plan.append(("losses", g))
                i += 1
                continue
            chain = self._chain(i)
            if chain is None:
                plan.append(("layer", s))
                i += 1
                continue
            plan.append(("fused", chain))
            i += len(chain[3])
        self._plan = plan
        self._groups = groups
        return self

    def _loss_groups(self) -> list[dict]:
        """Eq. 4 as the generated nets spell it: two blobs (N, K*m) each cut by a Slice into K pieces
        along axis 1, and K EuclideanLoss layers, the k-th on the k-th piece of each. Such a group
        runs as one difference and one reduction: loss_k = sum over rows and the k-th m columns of
        (a - b)^2 / N / 2, Caffe's EuclideanLoss of each piece. The Slices go when only the group
        reads their pieces."""
        specs = self.specs
        made_by = {t: (s, k) for s in specs if s.type == "Slice" for k, t in enumerate(s.tops)}
        readers: dict[str, list] = {}
        for s in specs:
            for b in s.bottoms:
                readers.setdefault(b, []).append(s)
        pairs: dict[tuple, list] = {}
        for s in specs:
            if s.type != "EuclideanLoss" or len(s.bottoms) != 2 or not all(b in made_by for b in s.bottoms):
                continue
            (sa, ka), (sb, kb) = made_by[s.bottoms[0]], made_by[s.bottoms[1]]
            pairs.setdefault((id(sa), id(sb)), []).append((s, sa, ka, sb, kb))
        groups = []
        for items in pairs.values():
            _, sa, _, sb, _ = items[0]
            la, lb = self.layer(sa.name), self.layer(sb.name)
            src_a, src_b = self.shapes[sa.bottoms[0]], self.shapes[sb.bottoms[0]]
            k = len(sa.tops)
            if (len(items) != k or len(sb.tops) != k or [it[2] for it in items] != list(range(k))
                    or [it[4] for it in items] != list(range(k)) or len(src_a) != 2 or src_a != src_b
                    or la.axis != 1 or lb.axis != 1 or len(set(la.sizes)) != 1 or la.sizes != lb.sizes
                    or any(s.tops[0] in readers for s, *_ in items)):
                continue
            losses = [it[0] for it in items]
            members = list(losses)
            for sl in (sa, sb):
                if all(r in losses for t in sl.tops for r in readers.get(t, [])):
                    members.append(sl)
            groups.append({"losses": losses, "members": members, "a": sa.bottoms[0], "b": sb.bottoms[0],
                           "k": k, "m": la.sizes[0], "tops": [s.tops[0] for s in losses]})
        return groups

    def loss_vector(self, blobs: dict, tops: list[str]) -> torch.Tensor:
        """The losses of `tops`, in order, as one vector (the fused groups' own vectors where they fit)."""
        vectors, i = [], 0
        by_first = {g["tops"][0]: g for g in (self._groups if self._plan is not None else [])}
        while i < len(tops):
            g = by_first.get(tops[i])
            if g is not None and tops[i:i + g["k"]] == g["tops"] and "vector" in g:
                vectors.append(g.pop("vector"))
                i += g["k"]
            else:
                vectors.append(blobs[tops[i]].reshape(1))
                i += 1
        return vectors[0] if len(vectors) == 1 else torch.cat(vectors)

    def _chain(self, i: int):
        """(BatchNorm module, Scale module, relu, the layers' specs) of a fusable chain at specs[i]."""
        specs = self.specs
        bn = specs[i]
        if bn.type != "BatchNorm" or i + 1 >= len(specs) or len(bn.bottoms) != 1:
            return None
        shape = self.shapes.get(bn.bottoms[0], ())
        if len(shape) != 4 or shape[0] * shape[2] * shape[3] < 2:
            return None  # (batch statistics over one value per channel: the layer-by-layer path)
        sc = specs[i + 1]
        scale = self.layer(sc.name)
        if (sc.type != "Scale" or sc.bottoms != bn.tops or scale.two_bottoms or scale.axis != 1
                or tuple(scale.weight.shape) != (self.shapes[bn.tops[0]][1],)):
            return None
        used = [s for s in specs if s is not bn and s is not sc]
        if bn.tops[0] != sc.tops[0] and any(bn.tops[0] in s.bottoms for s in used):
            return None  # the normalised blob is read elsewhere: keep it
        members = [bn, sc]
        relu = False
        if i + 2 < len(specs):
            r = specs[i + 2]
            if (r.type == "ReLU" and r.bottoms == sc.tops and r.tops == sc.tops
                    and not self.layer(r.name).slope):
                members.append(r)
                relu = True
        return self.layer(bn.name), scale, relu, members

    def unfuse(self) -> CaffeNet:
        self._plan = None
        return self

    _plan = None
    _groups: list = []

    skip: frozenset = frozenset()  # layers the fused forward leaves out (their tops are given)

    def forward_layers(self, blobs: dict, names) -> dict:
        """Only the layers `names`, in the net's order, one by one on `blobs` (a new dict)."""
        blobs, names = dict(blobs), set(names)
        for s in self.specs:
            if s.name in names:
                out = self.layers[self._keys[s.name]](*[blobs[b] for b in s.bottoms])
                for t, v in zip(s.tops, (out,) if isinstance(out, torch.Tensor) else out):
                    blobs[t] = v
        return blobs

    def _run_plan(self, blobs: dict) -> dict:
        skip = self.skip
        for kind, what in self._plan:
            if kind == "fused" and skip and any(m.name in skip for m in what[3]):
                rest = [m.name for m in what[3] if m.name not in skip]
                blobs.update(self.forward_layers(blobs, rest) if rest else {})
                continue
            if kind == "layer":
                s = what
                if s.type in INPUT_TYPES or s.name in skip:
                    continue
                out = self.layers[self._keys[s.name]](*[blobs[b] for b in s.bottoms])
                if isinstance(out, torch.Tensor):
                    out = (out,)
                for t, v in zip(s.tops, out):
                    blobs[t] = v
            elif kind == "losses":
                a, b = blobs[what["a"]], blobs[what["b"]]
                d = a - b
                n = a.shape[0]
                vec = (d * d).view(n, what["k"], what["m"]).sum(dim=(0, 2)) / n / 2.0
                what["vector"] = vec
                for k, t in enumerate(what["tops"]):
                    blobs[t] = vec[k]
            else:
                bn, scale, relu, members = what
                y = bn.fused(blobs[members[0].bottoms[0]], scale.weight,
                             scale.bias if "bias" in scale.blob_names else None, relu)
                blobs[members[-1].tops[0]] = y
        return blobs

    def freeze_batchnorm(self) -> CaffeNet:
        """Inference form: every BatchNorm with stored statistics keeps mean and var precomputed.

        Blobs loaded afterwards are not seen by the frozen layers: call it after loading.
        """
        for s in self.specs:
            mod = self.layer(s.name)
            if isinstance(mod, BatchNorm) and mod.use_global_stats:
                mod.freeze()
        return self

    # ---- Caffe blobs in and out ----------------------------------------------------

    def _blob_layers(self):
        for s in self.specs:
            mod = self.layer(s.name)
            if mod.blob_names:
                yield s, mod

    def load_caffe_blobs(self, blobs: dict[str, list[np.ndarray]], strict: bool = True) -> None:
        """Copy blobs by layer name, as Caffe's copy_from does.

        Caffe accepts a blob whose count matches when its shape differs only in
        the legacy 4-axis form (e.g. an InnerProduct weight stored (1, 1, N, K));
        any other mismatch is a NetError naming the layer. With `strict`, every
        layer with blobs must be given, and every given layer must exist.
        """
        self._need_setup("load_caffe_blobs")
        known = {s.name for s, _ in self._blob_layers()}
        if strict:
            missing = sorted(known - set(blobs))
            if missing:
                raise NetError(f"no blobs given for layer(s) {', '.join(missing)}")
            extra = sorted(n for n, b in blobs.items() if n not in known and len(b))
            if extra:
                raise NetError(f"blobs given for layer(s) not in the net (or without blobs): {', '.join(extra)}")
        with torch.no_grad():
            for s, mod in self._blob_layers():
                if s.name not in blobs:
                    continue
                given = blobs[s.name]
                want = [tuple(t.shape) for t in mod.blobs()]
                got = [tuple(np.shape(a)) for a in given]
                if len(got) != len(want) or any(not _shape_fits(g, w) for g, w in zip(got, want)):
                    raise NetError(f"layer {s.name!r} ({s.type}): blobs of shapes {got} do not fit the net's {want}")
                for t, a in zip(mod.blobs(), given):
                    t.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(t.shape)))

    def caffe_blobs(self) -> dict[str, list[np.ndarray]]:
        self._need_setup("caffe_blobs")
        return {s.name: [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in mod.blobs()]
                for s, mod in self._blob_layers()}

    def blob_params(self) -> list[tuple[str, int, torch.Tensor, float, float]]:
        """(layer, blob index, tensor, lr_mult, decay_mult) of every learnable blob, in net.params order."""
        self._need_setup("blob_params")
        out = []
        for s, mod in self._blob_layers():
            if s.type == "BatchNorm":
                continue
            for i, t in enumerate(mod.blobs()):
                lr = s.lr_mults[i] if i < len(s.lr_mults) else 1.0
                decay = s.decay_mults[i] if i < len(s.decay_mults) else 1.0
                out.append((s.name, i, t, float(lr), float(decay)))
        return out


def _shape_fits(got: tuple, want: tuple) -> bool:
    if got == want:
        return True
    # Blob::ShapeEquals: a legacy (num, channels, height, width) blob matches up to 4 axes padded with 1s.
    if len(got) == 4 and len(want) <= 4:
        return tuple([1] * (4 - len(want)) + list(want)) == got
    return False


def from_netparameter(net_param, phase: str = "TEST", input_shapes: dict | None = None,
                      seed: int = 0) -> CaffeNet:
    """Build the module for `phase` (Caffe's include/exclude rules applied).

    Input shapes come from Input layers and the net-level `input` fields;
    `input_shapes` gives or overrides them (HDF5Data and Data need it, or the
    first forward sets them). Blobs start from the layers' Caffe fillers drawn
    from torch's generator seeded with `seed`.
    """
    specs = layer_specs(net_param, phase)
    shapes = _net_input_shapes(net_param)
    for s in specs:
        if s.type == "Input" and s.param is not None:
            ip = s.param.input_param
            if len(ip.shape) not in (0, 1, len(s.tops)):
                raise NetError(f"layer {s.name!r} (Input): {len(ip.shape)} shapes for {len(s.tops)} tops")
            for i, top in enumerate(s.tops):
                if len(ip.shape):
                    shapes[top] = tuple(ip.shape[0 if len(ip.shape) == 1 else i].dim)
    shapes.update(input_shapes or {})
    return CaffeNet(specs, phase, shapes, seed)
