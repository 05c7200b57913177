#!/usr/bin/env python3
"""Train one stage of Algorithm 1 in real Caffe (or the torch engine), resuming from its last snapshot.

What the stage starts from, the loss weights it trains with (Eq. 5 or Eq. 9) and its product come
from the stage table (mcl/method/stages.py, printed below); --init, --loss-weights and --out
override it, and an override that contradicts the table is said on stderr and recorded in the
manifest. --name trains a named copy of the stage's net and solver: an audit row of the table
(e.g. --stage heads --name sam_heads) or an ablation of your own. heads --separate trains one run
per head (head_<cluster>) -> models/heads_separate.json. With --engine torch the same net and
solver train in PyTorch with Caffe's numerics (mcl/engine; --device cuda on a GPU); the products
are the same Caffe files. The runner is mcl/run/stage.py; the full log goes to
<run>/logs/<stage>.log; progress is a bar. Interrupted (Ctrl-C or killed), the next run resumes
from the latest snapshot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.caffe import bnstats
from mcl.method.stages import STAGES, table
from mcl.records.lock import writer
from mcl.run.stage import ENGINES, PRECISIONS, SWITCHES, StageError, train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__ + "\n" + table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (holds data/, nets/, solvers/)")
    ap.add_argument("--stage", required=True, choices=sorted(STAGES), help="stage to train")
    ap.add_argument("--init", help="caffemodel to start from (default: the table's, e.g. models/bm.caffemodel "
                                   "for stage2)")
    ap.add_argument("--loss-weights", help="loss-weights JSON (default: the table's, Eq. 5 for stage2/3, Eq. 9 for "
                                           "heads); 'uniform': u_j = 1")
    ap.add_argument("--separate", action="store_true", help="heads: one run per head instead of one joint run")
    ap.add_argument("--warmup", action="store_true",
                    help="stage1: start from the warm-up's final solverstate (METHOD §5.5's optional warm-up; train "
                         "--stage warmup first)")
    ap.add_argument("--name", help="train the stage on a named copy of its net and solver (stage_nets/NAME*_train."
                                   "prototxt, snapshots/NAME): an ablation with its own loss weights and snapshots")
    ap.add_argument("--out", help="output caffemodel (default: the table's product, e.g. models/wm.caffemodel)")
    ap.add_argument("--bn-stats", choices=bnstats.SETTINGS, default=bnstats.DEFAULT,
                    help="BatchNorm statistics of the product: recomputed with the final weights over training "
                         "batches (default), or running (Caffe's raw running averages); the raw model is kept "
                         "beside it as <out>.raw.caffemodel")
    ap.add_argument("--bn-batches", type=int, default=bnstats.DEFAULT_BATCHES,
                    help=f"training batches the statistics are recomputed over (default {bnstats.DEFAULT_BATCHES}, "
                         "at most one pass over the split)")
    ap.add_argument("--engine", choices=ENGINES, default="caffe",
                    help="caffe (the reference, default) or torch: the same net and solver in PyTorch with "
                         "Caffe's numerics (mcl/engine)")
    ap.add_argument("--device", default="cpu", help="torch engine: cpu (default), cuda or cuda:N")
    ap.add_argument("--tf32", choices=SWITCHES, default="off",
                    help="torch engine on cuda: TF32 matmuls and convolutions (default off: full float32)")
    ap.add_argument("--deterministic", choices=SWITCHES, default="on",
                    help="torch engine on cuda: deterministic algorithms, so that runs and resumed runs give "
                         "the same bits (default on; off lets cuDNN pick its fastest kernels)")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="torch engine: fp32 (default) or bf16: convolutions and matrix products in bfloat16 "
                         "under autocast, the weights, their update, BatchNorm statistics and the losses in float32 "
                         "(opt-in; refused where the device has no bfloat16, and with --engine caffe)")
    ap.add_argument("--keep-snapshots", action="store_true",
                    help="keep the model of every periodic snapshot (a tenth of the stage apart) in "
                         "snapshots/NAME_curve/, for the learning curve (tools/curve.py); by default a finished "
                         "stage keeps only its last snapshot")
    args = ap.parse_args(argv)
    try:
        with writer(Path(args.run)):
            train(Path(args.run), args.stage, init=Path(args.init).resolve() if args.init else None,
                  weights=args.loss_weights,
                  out=Path(args.out) if args.out else None, name=args.name, separate=args.separate,
                  warmup=args.warmup, bn_stats=args.bn_stats, bn_batches=args.bn_batches, engine=args.engine,
                  device=args.device, tf32=args.tf32 == "on", deterministic=args.deterministic == "on",
                  keep_snapshots=args.keep_snapshots, precision=args.precision)
    except (StageError, ValueError, OSError) as exc:  # bnstats.StatsError, ModelError, PrecisionError: ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the next run resumes from the last snapshot", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
