#!/usr/bin/env python3
"""Check that a run folder is intact: recompute every checksum of <run>/manifest.json
(each artifact, and each input it was made from) and of <run>/data/manifest.json (each
data file), and name every file that is missing or differs.

  python tools/verify.py --run runs/ibug-68        (make verify RUN=runs/ibug-68)

Exit status: 0 intact, 2 when any file is missing or differs (or no manifest is there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.records.verify import VerifyError, check_run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (holds manifest.json)")
    args = ap.parse_args(argv)
    try:
        report = check_run(Path(args.run))
    except VerifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        missing = sum(p.state == "missing" for p in report.problems)
        print(f"{args.run}: NOT intact: {len(report.problems)} of {report.checked} checksums fail "
              f"({missing} missing, {len(report.problems) - missing} differ)", file=sys.stderr)
        return 2
    print(f"{args.run}: intact ({report.checked} checksums over {len(report.files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
