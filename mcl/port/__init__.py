"""Porting trained weights out of Caffe: NumPy, PyTorch and ONNX, and back.

Modules (import them by name; this package imports nothing by itself):
  reading  a prototxt + caffemodel pair read with protobuf and checked against each other
  folding  BatchNorm + Scale folded into the layer before them
  engines  the reference engines (Caffe, OpenCV dnn) and PyTorch / ONNX Runtime on the check input
  formats  the exports (ONNX, npz, state_dict, prototxt) and the way back to a caffemodel
  convert  port(): every export checked against the reference, the model cards, write; re-exports the above
  predict  landmarks from an ONNX model with the evaluation's crop, no Caffe
  bench    forward speed of Caffe, OpenCV dnn, PyTorch and ONNX Runtime side by side

May import: `mcl.method`, `mcl.caffe` (Caffe files are read with protobuf only; the benchmark generates
its net), `mcl.torchnet`, `mcl.data` (the crops), `mcl.evaluation` (its metrics) and `mcl.fileio`.
pycaffe, OpenCV dnn and ONNX Runtime only inside the functions that run them.
"""
