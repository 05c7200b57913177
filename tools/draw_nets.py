#!/usr/bin/env python3
"""Draw the BM, pre-BM and multi-center nets as PNG with Caffe's own draw_net (graphviz).

Deploy versions are drawn (the train nets add one loss layer per landmark and
per head, which buries the structure); the loss of Eq. 4 is drawn for layout 5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mcl.caffe import netgen
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.stages import STAGES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/img", help="output folder (default docs/img)")
    ap.add_argument("--layout", default="68", choices=sorted(LAYOUTS, key=int), help="layout (default 68)")
    ap.add_argument("--rankdir", default="TB", choices=("TB", "LR"), help="graph direction (default TB)")
    args = ap.parse_args(argv)
    import caffe.draw  # needs pydot and graphviz's dot
    layout = get_layout(args.layout)
    nets = {
        f"bm_{layout.name}": netgen.deploy_net(layout),
        f"pre_bm_{layout.name}": netgen.deploy_net(layout, "pre_bm"),
        f"multi_center_{layout.name}": netgen.deploy_net(layout, clusters=layout.cluster_names),
        "eq4_loss_5": netgen.train_net(get_layout(5), STAGES["stage2"]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, net in nets.items():
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=out, prefix=f".{name}.")
        os.close(fd)
        caffe.draw.draw_net_to_file(net, tmp, args.rankdir)
        os.replace(tmp, out / f"{name}.png")
        print(f"wrote {out / f'{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
