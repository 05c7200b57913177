#!/usr/bin/env python3
"""Write a real photo the project may ship and show: scikit-image's astronaut (Eileen Collins, NASA;
public domain), 512 x 512 colour, as a PNG. `make demo` aligns it with the in-box 68-point model.

  tools/sample_photo.py --out runs/demo/photo/astronaut.png
"""

from __future__ import annotations

import argparse
import sys

from mcl.port.predict import PredictError, sample_photo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    try:
        sample_photo(args.out)
    except (PredictError, OSError) as exc:
        print(f"sample_photo: error: {exc}", file=sys.stderr)
        return 2
    print(f"sample_photo: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
