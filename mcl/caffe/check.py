"""Check that the Caffe in use imports and has every layer type the paper needs.

Run as ``python -m mcl.caffe.check``; ``make setup`` runs it after linking Caffe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Layer types used by the generated nets (METHOD §2-3) and the data paths.
REQUIRED_LAYERS = (
    "Convolution", "BatchNorm", "Scale", "ReLU", "Pooling", "InnerProduct",
    "HDF5Data", "Data", "Slice", "EuclideanLoss", "Input", "Flatten", "Python",
)


def caffe_tool() -> str:
    """Path of the `caffe` command-line tool: the one beside this interpreter first."""
    here = os.path.join(os.path.dirname(sys.executable), "caffe")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("caffe")
    if not found:
        raise SystemExit("caffe tool not found: run `make setup` (or set MCL_CAFFE_ROOT)")
    return found


def caffe_version(tool: str | None = None) -> str:
    out = subprocess.run([tool or caffe_tool(), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split()[-1]


def main() -> int:
    try:
        import caffe
    except Exception as exc:  # any import failure is reported, not raised
        print(f"caffe_check: `import caffe` failed: {exc!r}", file=sys.stderr)
        return 1
    have = set(caffe.layer_type_list())
    missing = [t for t in REQUIRED_LAYERS if t not in have]
    tool = caffe_tool()
    version = caffe_version(tool)
    print(f"caffe_check: pycaffe {caffe.__file__}")
    print(f"caffe_check: tool {tool} (version {version})")
    print(f"caffe_check: {len(REQUIRED_LAYERS) - len(missing)}/{len(REQUIRED_LAYERS)} required layer types present")
    if missing:
        print(f"caffe_check: missing layer types: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
