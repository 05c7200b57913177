"""A Caffe NetParameter as a torch.nn.Module with Caffe's numerics, for the port and for
training in PyTorch: spec.py reads a net into the layers one phase runs (include/exclude
rules, V1 `layers`, input shapes), layers.py holds Caffe's layers as modules (Convolution,
BatchNorm, Pooling, the Eq. 4 losses ...), net.py the net (`CaffeNet`, `from_netparameter`,
Caffe's blobs in and out). May import torch, `mcl.caffe.proto` / `mcl.caffe.caffemodel` (the
protobuf-only Caffe file layer) and `mcl.method`; never pycaffe, so it runs where no Caffe is
built. The training engine's fused forward is not here: it is `mcl.engine.fused`. Nor is the method's
second architecture (MobileNetV2, a PyTorch model, not a Caffe net): it is `mcl.method.backbones`.
"""

from mcl.torchnet.layers import LAYERS, BatchNorm, InnerProduct, Layer
from mcl.torchnet.net import CaffeNet, from_netparameter, random_blobs, shape_fits
from mcl.torchnet.spec import INPUT_TYPES, PHASES, V1_TYPES, LayerSpec, NetError, layer_specs, net_input_shapes

__all__ = [
    "INPUT_TYPES", "LAYERS", "PHASES", "V1_TYPES", "BatchNorm", "CaffeNet", "InnerProduct", "Layer", "LayerSpec",
    "NetError", "from_netparameter", "layer_specs", "net_input_shapes", "random_blobs", "shape_fits",
]
