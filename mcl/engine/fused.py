"""The training engine's forward of a torchnet CaffeNet, made faster without changing what it computes.

Each BatchNorm -> Scale (-> ReLU) chain runs as one fused kernel, and each Eq. 4 group of
sliced EuclideanLoss layers as one difference and one reduction, its losses one vector
(FusedNet.loss_vector). The layers keep their blobs; only where float32 results are
rounded changes (tests/test_engine.py holds the fused net to the layer-by-layer one).
Layers in `skip` are left out: the fixed prefix's (fixed.py), whose tops the caller gives.
Under bfloat16 autocast (Solver's precision "bf16") each loss group casts its inputs to float32,
and BatchNorm its input (layers.py), so losses and statistics are float32 sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mcl.engine import clkernels
from mcl.torchnet import INPUT_TYPES, CaffeNet


def forward_layers(net: CaffeNet, blobs: dict, names) -> dict:
    """Only the layers `names`, in the net's order, one by one on `blobs` (a new dict)."""
    blobs, names = dict(blobs), set(names)
    for s in net.specs:
        if s.name in names:
            net.run_layer(s, blobs)
    return blobs


class FusedNet:
    """A CaffeNet's training forward: fused where the net allows (`fuse`), else layer by layer.

    A chain qualifies when the Scale (one bottom, a learned scale of shape (C,) on axis 1)
    reads only the BatchNorm's top and comes right after it, and a ReLU (slope 0) right
    after that works in place on the Scale's top; and no other layer reads a blob the
    chain overwrites. `plan` lists what runs, in order: ("layer", spec), ("fused",
    (BatchNorm module, Scale module, relu, the chain's specs)) or ("losses", group);
    None without `fuse`.
    """

    def __init__(self, net: CaffeNet, fuse: bool = True):
        self.net = net
        self.plan: list | None = None
        self.groups: list[dict] = []
        self.skip: frozenset = frozenset()  # layers the fused forward leaves out (their tops are given)
        # The channels-last kernels (clkernels.py) for the chains and the poolings, where the maps are
        # channels-last float32 (the solver sets this when it loaded them); elsewhere PyTorch's kernels.
        self.kernels = False
        self.conv_read: frozenset = frozenset()  # chains' tops that convolutions alone read
        if fuse:
            net.require_setup("fuse")
            self.groups = _loss_groups(net)
            self.plan = _plan(net, self.groups)
            self.conv_read = _read_by_convolutions_only(net, self.plan)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every blob by top name, as net(inputs) gives them (inputs may hold the skipped layers' tops)."""
        if self.plan is None:
            return self.net(inputs)
        blobs = self.net.input_blobs(inputs)
        for name, value in inputs.items():  # blobs of skipped layers, computed elsewhere
            blobs.setdefault(name, value)
        return self._run(blobs)

    def loss_vector(self, blobs: dict, tops: list[str]) -> torch.Tensor:
        """The losses of `tops`, in order, as one vector (the fused groups' own vectors where they fit)."""
        vectors, i = [], 0
        by_first = {g["tops"][0]: g for g in (self.groups if self.plan is not None else [])}
        while i < len(tops):
            g = by_first.get(tops[i])
            if g is not None and tops[i:i + g["k"]] == g["tops"] and "vector" in g:
                vectors.append(g.pop("vector"))
                i += g["k"]
            else:
                vectors.append(blobs[tops[i]].reshape(1))
                i += 1
        return vectors[0] if len(vectors) == 1 else torch.cat(vectors)

    def _run(self, blobs: dict) -> dict:
        net, skip = self.net, self.skip
        for kind, what in self.plan:
            if kind == "fused" and skip and any(m.name in skip for m in what[3]):
                rest = [m.name for m in what[3] if m.name not in skip]
                blobs.update(forward_layers(net, blobs, rest) if rest else {})
                continue
            if kind == "layer":
                if what.type in INPUT_TYPES or what.name in skip:
                    continue
                if self.kernels and what.type == "Pooling" and len(what.bottoms) == 1 and len(what.tops) == 1:
                    y = clkernels.pool(net.layer(what.name), blobs[what.bottoms[0]])
                    if y is not None:
                        blobs[what.tops[0]] = y
                        continue
                net.run_layer(what, blobs)
            elif kind == "losses":
                a, b = blobs[what["a"]], blobs[what["b"]]
                if a.dtype == torch.bfloat16 or b.dtype == torch.bfloat16:  # bf16 training: losses in float32
                    a, b = a.float(), b.float()
                d = a - b
                n = a.shape[0]
                vec = (d * d).view(n, what["k"], what["m"]).sum(dim=(0, 2)) / n / 2.0
                what["vector"] = vec
                for k, t in enumerate(what["tops"]):
                    blobs[t] = vec[k]
            else:
                bn, scale, relu, members = what
                if self.kernels:
                    x = blobs[members[0].bottoms[0]]
                    bias = scale.bias if "bias" in scale.blob_names else None
                    # bf16: channels-last maps read as they are (statistics in double, as native()'s in float32);
                    # others the kernels cannot read go through a float32 cast
                    top = members[-1].tops[0]  # (bf16: in bfloat16 where convolutions alone read it)
                    y = clkernels.chain(bn, x, scale.weight, bias, relu, out_bf16=top in self.conv_read)
                    if y is None and x.dtype == torch.bfloat16:
                        y = clkernels.chain(bn, x.float(), scale.weight, bias, relu)
                    if y is not None:
                        blobs[members[-1].tops[0]] = y
                        continue
                y = bn.native(blobs[members[0].bottoms[0]], scale.weight,
                              scale.bias if "bias" in scale.blob_names else None)
                # BatchNorm, Scale and ReLU in one kernel: the same arithmetic as the three layers,
                # rounded once per element instead of after each; the statistics move as in forward().
                # ReLU in place: batch_norm keeps its input for the backward pass, not its output.
                blobs[members[-1].tops[0]] = F.relu_(y) if relu else y
        return blobs


def _read_by_convolutions_only(net: CaffeNet, plan: list) -> frozenset:
    """The tops of the plan's chains that only Convolution layers read (none written in place after)."""
    out = set()
    for kind, what in plan:
        if kind == "fused":
            members = what[3]
            top = members[-1].tops[0]
            readers = [s for s in net.specs if top in s.bottoms and all(s is not m for m in members)]
            if readers and all(s.type == "Convolution" for s in readers):
                out.add(top)
    return frozenset(out)


def _plan(net: CaffeNet, groups: list[dict]) -> list:
    grouped = {id(s): g for g in groups for s in g["members"]}
    plan, i, specs = [], 0, net.specs
    while i < len(specs):
        s = specs[i]
        if id(s) in grouped:
            g = grouped[id(s)]
            if s is g["losses"][0]:
                plan.append(("losses", g))
            i += 1
            continue
        chain = _chain(net, i)
        if chain is None:
            plan.append(("layer", s))
            i += 1
            continue
        plan.append(("fused", chain))
        i += len(chain[3])
    return plan


def _loss_groups(net: CaffeNet) -> list[dict]:
    """Eq. 4 as the generated nets spell it: two blobs (N, K*m) each cut by a Slice into K pieces
    along axis 1, and K EuclideanLoss layers, the k-th on the k-th piece of each. Such a group
    runs as one difference and one reduction: loss_k = sum over rows and the k-th m columns of
    (a - b)^2 / N / 2, Caffe's EuclideanLoss of each piece. The Slices go when only the group
    reads their pieces."""
    specs = net.specs
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
        la, lb = net.layer(sa.name), net.layer(sb.name)
        src_a, src_b = net.shapes[sa.bottoms[0]], net.shapes[sb.bottoms[0]]
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


def _chain(net: CaffeNet, i: int):
    """(BatchNorm module, Scale module, relu, the layers' specs) of a fusable chain at net.specs[i]."""
    specs = net.specs
    bn = specs[i]
    if bn.type != "BatchNorm" or i + 1 >= len(specs) or len(bn.bottoms) != 1:
        return None
    shape = net.shapes.get(bn.bottoms[0], ())
    if len(shape) != 4 or shape[0] * shape[2] * shape[3] < 2:
        return None  # (batch statistics over one value per channel: the layer-by-layer path)
    sc = specs[i + 1]
    scale = net.layer(sc.name)
    if (sc.type != "Scale" or sc.bottoms != bn.tops or scale.two_bottoms or scale.axis != 1
            or tuple(scale.weight.shape) != (net.shapes[bn.tops[0]][1],)):
        return None
    used = [s for s in specs if s is not bn and s is not sc]
    if bn.tops[0] != sc.tops[0] and any(bn.tops[0] in s.bottoms for s in used):
        return None  # the normalised blob is read elsewhere: keep it
    members = [bn, sc]
    relu = False
    if i + 2 < len(specs):
        r = specs[i + 2]
        if (r.type == "ReLU" and r.bottoms == sc.tops and r.tops == sc.tops
                and not net.layer(r.name).slope):
            members.append(r)
            relu = True
    return net.layer(bn.name), scale, relu, members
