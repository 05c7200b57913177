"""MCL-Caffe: Deep Multi-Center Learning for face alignment, in BVLC Caffe."""

__version__ = "0.1.0"
