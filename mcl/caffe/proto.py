"""caffe_pb2 without libcaffe: the one layer through which the project reads and writes Caffe's files.

Prototxt, caffemodels, solvers, solver states and LMDB Datums need protobuf only.

`import caffe` loads libcaffe (pycaffe's package imports its C++ module), so the
generated caffe_pb2.py of the Caffe we find is loaded by file, under its own
module name: a later `import caffe` then shares the same message classes.
Where no Caffe is installed at all, `mcl.caffe.schema` builds the subset
of caffe.proto the project reads (the MCL nets' layers, solvers, solver states, Datums) from its field
numbers. MCL_CAFFE_PROTO=builtin forces that subset.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from mcl.caffe import schema

os.environ.setdefault("GLOG_minloglevel", "2")

MODULE = "caffe.proto.caffe_pb2"


def _pycaffe_proto_file() -> Path | None:
    try:
        spec = importlib.util.find_spec("caffe")  # finds the package without running its __init__
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "proto" / "caffe_pb2.py"
        if path.exists():
            return path
    return None


def load():
    """The caffe_pb2 module: already imported, pycaffe's by file, or the built-in subset."""
    if os.environ.get("MCL_CAFFE_PROTO") == "builtin":
        return schema.module()
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    path = _pycaffe_proto_file()
    if path is None:
        return schema.module()
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE]
        raise
    if "caffe.proto" in sys.modules:
        sys.modules["caffe.proto"].caffe_pb2 = module
    return module


caffe_pb2 = load()
SOURCE = getattr(caffe_pb2, "__file__", None) or "built-in subset (mcl.caffe.schema)"
