"""Porting trained weights out of Caffe: NumPy, PyTorch and ONNX, and back.

Modules (import them by name; this package imports nothing by itself):
  reading  a prototxt + caffemodel pair read with protobuf and checked against each other
  folding  BatchNorm + Scale folded into the layer before them
  engines  the reference engines (Caffe, OpenCV dnn) and PyTorch / ONNX Runtime on the check input
  formats  the exports (ONNX, npz, state_dict, prototxt) and the way back to a caffemodel
  convert  port(): every export checked against the reference, the model cards, write; re-exports the above
  torch_export  a PyTorch model trained by mcl.method.pytorch (the second architecture's AM) to ONNX, with its card
  predict  landmarks from an ONNX model with the evaluation's crop, no Caffe; the faces a detector finds
  quantize the int8 model of a port (`tools/port.py int8`), calibrated on a run's faces, its cost measured
  inbox    the models in the box (models/<name>/): the real-trained AMs predict uses without --model,
           packaged with their model cards from `make paper` runs
  detect   face detectors (MediaPipe's BlazeFace, OpenCV's Haar cascade, dlib's HOG and CNN) and their boxes
           mapped onto each dataset's boxes
  video    a video or a camera frame by frame, faces tracked from the previous frame's landmarks
  peers    dlib's 68-point shape predictor on a run's test split, as a predictions file

The forward-speed benchmark (`make bench-port`) is a harness outside the package: benchmarks/bench_port.py.

May import: `mcl.method`, `mcl.caffe` (Caffe files are read with protobuf only), `mcl.torchnet`,
`mcl.data` (the crops), `mcl.evaluation` (its metrics), `mcl.records` (a run's records) and `mcl.fileio`.
pycaffe, OpenCV dnn and ONNX Runtime only inside the functions that run them; dlib (optional, `make
setup-peers`) at module top inside try/except ImportError.
"""
