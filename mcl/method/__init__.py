"""The method itself: the paper's equations and Algorithm 1, with no Caffe, and PyTorch only where named below.

Holds the landmark layouts and their clusters (`layouts`, METHOD §8), Algorithm 1 as one
table of stages with their solvers (`stages`, METHOD §5), the loss weights of Eq. 5, 8 and 9
(`loss_weights`), the assembly of the heads into one layer on arrays, Eq. 2-3
(`assembly`), and the paper's own numbers, each cited by section (`paper`). `pytorch` is the
method for any PyTorch landmark regressor whose last layer is a linear D -> 2n (Section IV-E):
Eq. 4 as a loss module, the heads and their assembly as modules, Algorithm 1 as one function,
on the same Eq. 5/8/9 and Eq. 2-3 code as the Caffe pipeline. `sgd` is Caffe's SGD update on torch
tensors with its learning-rate policy and its data layers' batch order (METHOD §5.2), the one
implementation both PyTorch trainers run (`pytorch` here, the torch engine `mcl.engine` on the Caffe
nets); `backbones` the method's second architecture (MobileNetV2) as a PyTorch model; `errors` the
`ModelError` that the Caffe files (`mcl.caffe.caffemodel`) and `pytorch` both raise.

May import: NumPy and the standard library only, and torch in `pytorch.py`, `sgd.py` and `backbones.py`
alone (no other module here imports it); nothing else of `mcl`.
"""
