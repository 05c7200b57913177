#!/usr/bin/env python3
"""Assemble the multi-center heads into one shape layer: the assembled model AM (Eq. 2-3).

Takes the joint heads model (models/heads.caffemodel) or the listing of separate
head runs (models/heads_separate.json), splices each cluster's x/y rows and
biases into one InnerProduct, writes AM's caffemodel and deploy prototxt, and
checks on sample inputs that AM's output for every landmark equals the output
of that landmark's head exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mcl.caffe import assemble, caffemodel, netgen  # noqa: E402
from mcl.caffe.runfiles import run_layout  # noqa: E402
from mcl.evaluation.evaluate import EvalError, load_net, load_split  # noqa: E402
from mcl.fileio import atomic_write  # noqa: E402
from mcl.run import manifest  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--heads", required=True, help="heads caffemodel (joint) or heads_separate.json")
    ap.add_argument("--out", help="AM caffemodel (default models/am.caffemodel; deploy beside it)")
    ap.add_argument("--check-samples", type=int, default=64, help="validation faces for the self-check (default 64)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    out = Path(args.out).resolve() if args.out else run / "models" / "am.caffemodel"
    deploy_out = out.with_name(out.stem + "_deploy.prototxt")
    tmp = out.with_name(f".{out.name}.tmp")
    deploy_tmp = deploy_out.with_name(f".{deploy_out.name}.tmp")
    t0 = time.time()
    try:
        layout = run_layout(run)
        heads_path = Path(args.heads)
        if heads_path.suffix == ".json":
            try:
                listing = json.loads(heads_path.read_text())
            except json.JSONDecodeError as exc:
                raise caffemodel.ModelError(f"{heads_path}: not a heads listing ({exc.msg}, line {exc.lineno})") from None
            if listing.get("layout") != layout.name:
                raise caffemodel.ModelError(f"{heads_path}: heads of layout {listing.get('layout')}, run is {layout.name}")
            if not isinstance(listing.get("heads"), dict):
                raise caffemodel.ModelError(f"{heads_path}: no 'heads' mapping of cluster -> caffemodel")
            heads = {c: (caffemodel.load(run / p), run / p) for c, p in listing["heads"].items()}
            inputs = [run / p for p in listing["heads"].values()]
        else:
            model = caffemodel.load(heads_path)
            heads = {c: (model, heads_path) for c in layout.cluster_names}
            inputs = [heads_path]
        am = assemble.assemble(heads, layout)
        caffemodel.save(am, tmp)
        text = (f"# MCL-Caffe assembled model (AM): layout {layout.name}, heads from {heads_path.name}.\n"
                + netgen.to_text(netgen.deploy_net(layout)))
        atomic_write(deploy_tmp, text)
        # Self-check before AM takes its final name.
        images = load_split(run, "val", limit=args.check_samples)["data"]
        images = np.concatenate([images, np.random.default_rng(0).uniform(-1, 1, (8, 1, 50, 50)).astype(np.float32)])
        am_net = load_net(deploy_tmp, tmp)
        heads_deploy = run / "nets" / "heads_deploy.prototxt"
        nets = {}
        for c, (_, path) in heads.items():
            same = next((nets[k] for k in nets if heads[k][1] == path), None)
            nets[c] = same if same is not None else load_net(heads_deploy, path)
        res = assemble.verify(nets, am_net, images, layout)
        deploy_tmp.replace(deploy_out)
        tmp.replace(out)
    except (caffemodel.ModelError, EvalError, ValueError, OSError) as exc:
        for p in (tmp, deploy_tmp):  # a model that failed its self-check never looks finished
            if p.exists():
                p.unlink()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest.record(run, out, "assemble", {"heads": str(heads_path)}, inputs, time.time() - t0,
                    deploy=str(deploy_out.relative_to(run) if deploy_out.is_relative_to(run) else deploy_out), check=res)
    print(f"AM: {layout.m} heads spliced into one InnerProduct "
          f"({2 * layout.n_points} x {layout.feature_dim}); self-check on {res['samples']} inputs: exact")
    print(f"wrote {out} and {deploy_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
