#!/usr/bin/env python3
"""Add extra test splits to a run: another folder's test faces, cropped as the run's test split.

  python data_prep/extra_test.py --run runs/paper-mtfl net_rest=../shared/data/net_rest
  python data_prep/extra_test.py --run runs/paper-mtfl net_rest_80=../shared/data/net_rest:80

NAME=FOLDER reads FOLDER's test faces with the run's reader (its dataset and layout);
NAME=FOLDER:WIDTH reads its pictures reduced to WIDTH px wide by corner-aligned nearest-neighbour
sampling, the way the shared 80 x 80 AFLW pictures were made, with the points mapped alike.
Writes RUN/data/NAME.txt, NAME_NNN.h5 and NAME.manifest.json (last); `tools/evaluate.py
--split NAME` scores models on it. The logic lives in mcl/data/extra.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.data.extra import parse_spec, prepare_extra
from mcl.data.pool import WorkerError
from mcl.data.readers import DataError
from mcl.records.lock import writer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder with prepared data (RUN/data/manifest.json)")
    p.add_argument("splits", nargs="+", metavar="NAME=FOLDER[:WIDTH]", help="extra test splits to write")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable faces and list them in the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        specs = [parse_spec(s) for s in args.splits]
        with writer(run):
            for name, root, width in specs:
                doc = prepare_extra(run, name, root, width, args.workers, args.skip_bad, not args.quiet)
                print(f"wrote split {name} of {run}: {doc['counts']['crops']} crops from {root}"
                      + (f" reduced to {width} px wide" if width else "") + f"; {doc['n_skipped']} skipped")
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
