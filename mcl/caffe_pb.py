"""Caffe's protobuf messages (caffe_pb2), imported once with Caffe's logging quieted.

Importing `caffe.proto` loads pycaffe's package; GLOG_minloglevel keeps Caffe's
start-up log lines out of every tool's output unless the user set it.
"""

import os

os.environ.setdefault("GLOG_minloglevel", "2")

from caffe.proto import caffe_pb2  # noqa: E402

__all__ = ["caffe_pb2"]
