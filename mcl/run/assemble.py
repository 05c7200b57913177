"""Algorithm 1's last step in a run folder: the heads assembled into AM (Eq. 2-3), checked, recorded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mcl.caffe import assemble, caffemodel, netgen
from mcl.caffe.forward import load_net
from mcl.caffe.runfiles import run_layout
from mcl.data.splits import load_split
from mcl.fileio import atomic_write, durable_replace
from mcl.records import manifest


def assemble_run(run: Path, heads_path: Path, out: Path, check_samples: int = 64) -> dict:
    """AM of a run (Algorithm 1, step 3+m+1): its caffemodel and deploy net beside it, written under
    their final names only once Caffe shows AM's output for every landmark equal to its head's,
    on validation faces and random inputs; recorded in the run manifest."""
    t0 = time.time()
    layout = run_layout(run)
    deploy_out = out.with_name(out.stem + "_deploy.prototxt")
    tmp, deploy_tmp = out.with_name(f".{out.name}.tmp"), deploy_out.with_name(f".{deploy_out.name}.tmp")
    try:
        heads, inputs = assemble.read_heads(run, heads_path, layout)
        caffemodel.save(assemble.assemble(heads, layout), tmp)
        atomic_write(deploy_tmp, f"# MCL-Caffe assembled model (AM): layout {layout.name}, heads from "
                                 f"{heads_path.name}.\n" + netgen.to_text(netgen.deploy_net(layout)))
        images = load_split(run, "val", limit=check_samples)["data"]
        images = np.concatenate([images, np.random.default_rng(0).uniform(-1, 1, (8, 1, 50, 50)).astype(np.float32)])
        am_net = load_net(deploy_tmp, tmp)
        nets = {}
        for c, (_, path) in heads.items():
            same = next((nets[k] for k in nets if heads[k][1] == path), None)
            nets[c] = same if same is not None else load_net(run / "nets" / "heads_deploy.prototxt", path)
        check = assemble.verify(nets, am_net, images, layout)
        durable_replace(deploy_tmp, deploy_out)
        durable_replace(tmp, out)
    finally:
        for p in (tmp, deploy_tmp):  # a model that failed its self-check never looks finished
            p.unlink(missing_ok=True)
    manifest.record(run, out, "assemble", {"heads": str(heads_path)}, inputs, time.time() - t0,
                    deploy=str(deploy_out.relative_to(run) if deploy_out.is_relative_to(run) else deploy_out),
                    check=check)
    return {"layout": layout, "check": check, "deploy": deploy_out}
