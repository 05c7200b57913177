"""The errors the method's models raise, defined once for the Caffe files and the PyTorch models.

`ModelError` is a model that cannot be used as asked: a caffemodel that is missing, unreadable or does
not fit the net it is used with (mcl.caffe.caffemodel), or a PyTorch model Algorithm 1 cannot train as
asked (mcl.method.pytorch, whose ShapeLayerError is one). Both modules re-export it under their own name.
"""

from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(ValueError):
    """A model that cannot be used as asked: a caffemodel that is missing, unreadable or does not fit its
    net, or a PyTorch model algorithm1 cannot train as asked (a layer named to be fixed that it does not have)."""
