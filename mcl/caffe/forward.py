"""pycaffe TEST nets: a trained model loaded into its deploy net, and forward passes over crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcl.caffe.caffemodel import ModelError, check_fits, load


def load_net(deploy: Path, model: Path):
    """A pycaffe TEST net; a model of another layout or net is refused with its path."""
    import caffe

    caffe.set_mode_cpu()
    for p in (deploy, model):
        if not Path(p).exists():
            raise ModelError(f"{p}: missing")
    net = caffe.Net(str(deploy), caffe.TEST)
    # A separate head run holds one head: the heads deploy net's other heads may be absent.
    check_fits(load(model), net, model, require_all="heads_deploy" not in Path(deploy).name)
    net.copy_from(str(model))
    return net


def predict(net, images: np.ndarray, outputs: list[str], batch: int = 64) -> dict[str, np.ndarray]:
    """Forward `images` (N,1,50,50) through a pycaffe deploy net; crop-coordinate outputs."""
    res = {o: [] for o in outputs}
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        net.blobs["data"].reshape(*chunk.shape)
        net.blobs["data"].data[...] = chunk
        out = net.forward(blobs=outputs)
        for o in outputs:
            res[o].append(out[o].copy())
    return {o: np.concatenate(v) for o, v in res.items()}
