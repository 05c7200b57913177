"""Porting trained weights out of Caffe: NumPy, PyTorch and ONNX, and back.

Modules (import them by name; this package imports nothing by itself):
  convert  reading a prototxt + caffemodel pair, checks, BatchNorm folding, the exports, the way back
  predict  landmarks from an ONNX model with the evaluation's crop, no Caffe
  bench    forward speed of Caffe, OpenCV dnn, PyTorch and ONNX Runtime side by side

May import: `mcl.method`, `mcl.caffe`'s file layer (Caffe files are read with protobuf only),
`mcl.torchnet`, `mcl.data` (the crops), `mcl.evaluation` (its metrics) and `mcl.fileio`. pycaffe,
OpenCV dnn and ONNX Runtime only inside the functions that run them.
"""
