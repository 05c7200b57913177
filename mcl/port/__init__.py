"""Porting trained weights out of Caffe: NumPy, PyTorch and ONNX, and back.

Modules (import them by name; this package imports nothing by itself so that
`mcl.port.proto` loads without torch or Caffe):
  proto    caffe_pb2 without libcaffe (pycaffe's generated module, or a built-in subset)
  convert  reading a prototxt + caffemodel pair, checks, BatchNorm folding, the exports, the way back
  predict  landmarks from an ONNX model with the evaluation's crop, no Caffe
  bench    forward speed of Caffe, OpenCV dnn, PyTorch and ONNX Runtime side by side
"""
