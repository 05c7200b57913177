"""BatchNorm (stored statistics) and the Scale after it folded into the Convolution or
InnerProduct before them: a net of fewer layers that computes the same, up to float32 rounding."""

from __future__ import annotations

import numpy as np

from mcl import torchnet
from mcl.caffe.proto import caffe_pb2
from mcl.port.reading import type_name


def fold_batchnorm(net_param, blobs) -> tuple[object, dict[str, list[np.ndarray]], list[str]]:
    """Fold every BatchNorm (stored statistics) and the Scale after it into the Convolution or
    InnerProduct before it: w' = w g / sqrt(var + eps), b' = (b - mean) g / sqrt(var + eps) + beta.

    Returns the folded net, its blobs and the names of the layers folded away. A chain is
    folded only where nothing else reads its intermediate tops.
    """
    net = torchnet.from_netparameter(net_param, "TEST")
    specs = {s.name: s for s in net.specs}
    readers: dict[str, list[str]] = {}
    for s in net.specs:
        for b in s.bottoms:
            readers.setdefault(b, []).append(s.name)
    producer = {}
    order = [s.name for s in net.specs]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    new_blobs = {k: [a.copy() for a in v] for k, v in blobs.items()}
    removed: list[str] = []
    retop: dict[str, str] = {}
    for s in net.specs:
        if s.type == "BatchNorm" and net.layer(s.name).use_global_stats:
            prev = producer.get(s.bottoms[0])
            if prev is None or specs[prev].type not in ("Convolution", "InnerProduct"):
                continue
            chain = [s.name]
            i = order.index(s.name)
            nxt = specs[order[i + 1]] if i + 1 < len(order) else None
            if nxt is not None and nxt.type == "Scale" and len(nxt.bottoms) == 1 and nxt.bottoms == s.tops \
                    and net.layer(nxt.name).axis == 1 and len(net.layer(nxt.name).weight.shape) == 1:
                chain.append(nxt.name)
            if not _chain_private(prev, chain, specs, readers, order):
                continue
            _fold_into(net, prev, chain, new_blobs)
            removed += chain
            retop[prev] = specs[chain[-1]].tops[0]
            for t in specs[chain[-1]].tops:
                producer[t] = prev
            continue
        for t in s.tops:
            producer[t] = s.name
    layers = out.layer if len(out.layer) else out.layers
    keep = [lay for lay in layers if lay.name not in removed]
    for lay in keep:
        if lay.name in retop:
            del lay.top[:]
            lay.top.append(retop[lay.name])
            param = lay.convolution_param if type_name(lay) == "Convolution" else lay.inner_product_param
            param.bias_term = True
            while len(lay.param) == 1:  # the new bias blob is learned like a bias
                lay.param.add().CopyFrom(caffe_pb2.ParamSpec(lr_mult=2, decay_mult=0))
    del layers[:]
    layers.extend(keep)
    for name in removed:
        new_blobs.pop(name, None)
    return out, new_blobs, removed


def _chain_private(prev, chain, specs, readers, order) -> bool:
    """Nothing outside the chain reads a value the folding removes: a top of its own name
    (not in place) is read by the chain alone; an in-place top by nothing before the chain ends."""
    final = specs[chain[-1]].tops[0]
    end = order.index(chain[-1])
    for m in [specs[prev].tops[0]] + [specs[n].tops[0] for n in chain[:-1]]:
        for r in readers.get(m, []):
            if r in chain:
                continue
            if m != final or order.index(r) <= end:
                return False
    return True


def _fold_into(net, target: str, chain: list[str], blobs) -> None:
    bn = net.layer(chain[0])
    mean = np.asarray(blobs[chain[0]][0], np.float64) / _factor(blobs[chain[0]][2])
    var = np.asarray(blobs[chain[0]][1], np.float64) / _factor(blobs[chain[0]][2])
    a = 1.0 / np.sqrt(var + bn.eps)
    b = -mean * a
    if len(chain) > 1:
        sc = blobs[chain[1]]
        g = np.asarray(sc[0], np.float64)
        beta = np.asarray(sc[1], np.float64) if len(sc) > 1 else 0.0
        a, b = a * g, b * g + beta
    w = np.asarray(blobs[target][0], np.float64)
    tgt = net.layer(target)
    if isinstance(tgt, torchnet.InnerProduct) and tgt.transpose:
        w = w * a[None, :]
    else:
        w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    bias = np.asarray(blobs[target][1], np.float64) if len(blobs[target]) > 1 else 0.0
    blobs[target] = [w.astype(np.float32), (bias * a + b).astype(np.float32)]


def _factor(blob) -> float:
    s = float(np.asarray(blob).ravel()[0])
    return np.inf if s == 0 else s  # Caffe: factor 0 -> mean and var 0
