"""Caffe nets of every stage, generated as caffe_pb2.NetParameter (never from text templates).

METHOD §2 (the network), §3 (the loss of Eq. 4 from stock layers), §5 (what each
stage fixes). Layer names follow the authors' deploy prototxt: conv11,
conv11_bn, conv11_bn_scale, ReLU11, pool1, ...

Data paths are relative to the run folder: Caffe runs with the run folder as
its working directory, so `data/train.txt` is `<run>/data/train.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format

from mcl.caffe.proto import caffe_pb2
from mcl.method.layouts import INPUT_SIZE, PIXEL_MEAN, PIXEL_SCALE, Layout
from mcl.method.stages import BATCH_SIZE, CONVS, POOL_AFTER, PRE_BM_SHAPE_LAYER, SHAPE_LAYER, Stage

DATA_LAYER_TYPES = ("HDF5Data", "Data")  # the data layers of a train net (HDF5 or LMDB)
FEATURE_TOP = "pool4"  # x: global average of conv43

# [interp] METHOD §5.3, §12.5: what a *fixed* layer's BatchNorm does in training, per step.
#   global: use_global_stats, the layer is frozen whole (its stored statistics are
#           used and never move). "Fix Theta_S" reads most naturally this way, and
#           the stored statistics are the ones the previous stage's product carries
#           (recomputed for its final weights by the statistics step, mcl/caffe/bnstats.py).
#   batch:  Caffe's TRAIN default (the authors' deploy nets set no batch_norm_param):
#           batch statistics, and the stored averages keep moving.
# Joint and separate heads stay equal under both: the trunk's weights are fixed and
# every run reads the same batches, so its statistics move identically in each.
FROZEN_BN_SETTINGS = ("global", "batch")
FROZEN_BN_DEFAULT = {"stage2": "global", "heads": "global"}


@dataclass(frozen=True)
class DataSpec:
    """Where a train net reads from: HDF5 list file or a pair of LMDBs."""
    source: str = "hdf5"  # "hdf5" | "lmdb"
    split: str = "train"
    batch_size: int = BATCH_SIZE

    def __post_init__(self):
        if self.source not in ("hdf5", "lmdb"):
            raise ValueError(f"data source must be hdf5 or lmdb, got {self.source!r}")


def head_layer_name(cluster: str) -> str:
    return f"{SHAPE_LAYER}_{cluster}"


def loss_layer_name(j: int, cluster: str | None = None) -> str:
    """Loss layer of landmark j (1-based, as in Eq. 4), of head `cluster` if given."""
    return f"loss_{cluster}_{j:02d}" if cluster else f"loss_{j:02d}"


# ---- small layer builders --------------------------------------------------

def _param(layer, lr: float, decay: float) -> None:
    p = layer.param.add()
    p.lr_mult = lr
    p.decay_mult = decay


def _layer(net, name: str, type_: str, bottoms=(), tops=()):
    layer = net.layer.add()
    layer.name = name
    layer.type = type_
    layer.bottom.extend(bottoms)
    layer.top.extend(tops)
    return layer


def _learnable(layer, frozen: bool) -> None:
    """Weight and bias multipliers; a fixed layer gets lr_mult 0 decay_mult 0 (METHOD §5.3)."""
    if frozen:
        _param(layer, 0, 0)
        _param(layer, 0, 0)
    else:
        _param(layer, 1, 1)
        _param(layer, 2, 0)


def _conv_block(net, name: str, bottom: str, num_output: int, frozen: bool, frozen_bn: str = "global") -> str:
    conv = _layer(net, name, "Convolution", [bottom], [name])
    _learnable(conv, frozen)
    cp = conv.convolution_param
    cp.num_output = num_output
    cp.kernel_size.append(3)
    cp.pad.append(1)
    cp.stride.append(1)
    cp.weight_filler.type = "msra"
    cp.bias_filler.type = "constant"
    bn = _layer(net, f"{name}_bn", "BatchNorm", [name], [name])
    for _ in range(3):  # mean, variance, moving-average factor: never learned
        _param(bn, 0, 0)
    if frozen and frozen_bn == "global":
        bn.batch_norm_param.use_global_stats = True
    scale = _layer(net, f"{name}_bn_scale", "Scale", [name], [name])
    _learnable(scale, frozen)
    scale.scale_param.bias_term = True
    _layer(net, f"ReLU{name[4:]}", "ReLU", [name], [name])
    return name


def _max_pool(net, name: str, bottom: str) -> str:
    pool = _layer(net, name, "Pooling", [bottom], [name])
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
    pool.pooling_param.kernel_size = 2
    pool.pooling_param.stride = 2  # Caffe's ceil rounding: 50 -> 25 -> 13 -> 7 (-> 4)
    return name


def _inner_product(net, name: str, bottom: str, num_output: int, frozen: bool = False) -> str:
    ip = _layer(net, name, "InnerProduct", [bottom], [name])
    _learnable(ip, frozen)
    ip.inner_product_param.num_output = num_output
    ip.inner_product_param.weight_filler.type = "xavier"
    ip.inner_product_param.bias_filler.type = "constant"
    return name


# ---- data ------------------------------------------------------------------

def _data_layers(net, layout: Layout, data: DataSpec) -> tuple[str, str, str]:
    """Tops: image `data`, `landmarks` (N, 2n) in crop pixels, `inv_iod` (N,) = 1/d."""
    if data.source == "hdf5":
        h5 = _layer(net, "data", "HDF5Data", [], ["data", "landmarks", "inv_iod"])
        h5.hdf5_data_param.source = f"data/{data.split}.txt"
        h5.hdf5_data_param.batch_size = data.batch_size
        return "data", "landmarks", "inv_iod"
    img = _layer(net, "data", "Data", [], ["data"])
    img.data_param.source = f"data/{data.split}_lmdb"
    img.data_param.backend = caffe_pb2.DataParameter.LMDB
    img.data_param.batch_size = data.batch_size
    img.transform_param.mean_value.append(PIXEL_MEAN)
    img.transform_param.scale = PIXEL_SCALE
    tgt = _layer(net, "targets", "Data", [], ["targets"])
    tgt.data_param.source = f"data/{data.split}_targets_lmdb"
    tgt.data_param.backend = caffe_pb2.DataParameter.LMDB
    tgt.data_param.batch_size = data.batch_size
    # A Datum carries one int label, so targets live in float_data: 2n coordinates then 1/d.
    sl = _layer(net, "targets_slice", "Slice", ["targets"], ["landmarks_4d", "inv_iod_4d"])
    sl.slice_param.axis = 1
    sl.slice_param.slice_point.append(2 * layout.n_points)
    r1 = _layer(net, "landmarks_flat", "Reshape", ["landmarks_4d"], ["landmarks"])
    r1.reshape_param.shape.dim.extend([0, -1])
    r2 = _layer(net, "inv_iod_flat", "Reshape", ["inv_iod_4d"], ["inv_iod"])
    r2.reshape_param.shape.dim.extend([-1])
    return "data", "landmarks", "inv_iod"


def _input_layer(net) -> str:
    inp = _layer(net, "input", "Input", [], ["data"])
    inp.input_param.shape.add().dim.extend([1, 1, INPUT_SIZE, INPUT_SIZE])
    return "data"


# ---- trunk and heads ---------------------------------------------------------

def check_frozen_bn(setting: str) -> str:
    if setting not in FROZEN_BN_SETTINGS:
        raise ValueError(f"frozen BatchNorm setting must be one of {', '.join(FROZEN_BN_SETTINGS)}, got {setting!r}")
    return setting


def trunk(net, bottom: str, layout: Layout, frozen=(), variant: str = "bm", frozen_bn: str = "global") -> str:
    """The shared layers up to the feature x; returns x's top name.

    bm:     conv11..conv43 (D) -> global average pooling (pool4) -> x of size D.
    pre_bm: conv11..conv42 -> pool4 (max, 7 -> 4) -> fc5 (D, no nonlinearity).
    """
    top = bottom
    for name, width in CONVS:
        if variant == "pre_bm" and name == "conv43":
            break
        num_output = layout.feature_dim if width == "D" else width
        top = _conv_block(net, name, top, num_output, name in frozen, check_frozen_bn(frozen_bn))
        if name in POOL_AFTER:
            top = _max_pool(net, POOL_AFTER[name], top)
    if variant == "bm":
        gap = _layer(net, FEATURE_TOP, "Pooling", [top], [FEATURE_TOP])
        gap.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
        gap.pooling_param.global_pooling = True
        return FEATURE_TOP
    if variant == "pre_bm":
        top = _max_pool(net, "pool4", top)
        return _inner_product(net, "fc5", top, layout.feature_dim, frozen="fc5" in frozen)
    raise ValueError(f"unknown variant {variant!r}: bm or pre_bm")


def eq4_loss(net, pred: str, landmarks: str, inv_iod: str, weights, cluster: str | None = None,
             gt_slices: list[str] | None = None) -> list[str]:
    """Eq. 4 from stock layers: scale by 1/d per sample, slice per landmark, weighted EuclideanLoss.

    EuclideanLoss is sum(diff^2) / (2N): with loss_weight u_j the total is Eq. 4
    averaged over the batch. Returns the ground-truth slice tops so further heads
    can share them.
    """
    n = len(weights)
    sfx = f"_{cluster}" if cluster else ""
    pnorm = _layer(net, f"{pred}_norm", "Scale", [pred, inv_iod], [f"{pred}_norm"])
    pnorm.scale_param.axis = 0
    slice_points = [2 * j for j in range(1, n)]
    psl = _layer(net, f"{pred}_slice", "Slice", [f"{pred}_norm"],
                 [f"{pred}_{j:02d}" for j in range(1, n + 1)])
    psl.slice_param.axis = 1
    psl.slice_param.slice_point.extend(slice_points)
    if gt_slices is None:
        gnorm = _layer(net, f"{landmarks}_norm", "Scale", [landmarks, inv_iod], [f"{landmarks}_norm"])
        gnorm.scale_param.axis = 0
        gt_slices = [f"{landmarks}_{j:02d}" for j in range(1, n + 1)]
        gsl = _layer(net, f"{landmarks}_slice", "Slice", [f"{landmarks}_norm"], gt_slices)
        gsl.slice_param.axis = 1
        gsl.slice_param.slice_point.extend(slice_points)
    for j in range(1, n + 1):
        loss = _layer(net, loss_layer_name(j, cluster), "EuclideanLoss",
                      [f"{pred}_{j:02d}", gt_slices[j - 1]], [f"loss{sfx}_{j:02d}"])
        loss.loss_weight.append(float(weights[j - 1]))
    return gt_slices


# ---- whole nets ---------------------------------------------------------------

def _new_net(layout: Layout, what: str):
    net = caffe_pb2.NetParameter()
    net.name = f"mcl_{layout.name}_{what}"  # a label in Caffe's logs, never read back (shape_points tells n)
    return net


def train_net(layout: Layout, stage: Stage, data: DataSpec = DataSpec(), weights=None,
              variant: str = "bm", frozen_bn: str = "global"):
    """A single-head train net (BM of step 1, the weighting stages 2 and 3, pre-BM).

    `weights` are the u_j of Eq. 4 (default all 1, as for BM).
    """
    weights = [1.0] * layout.n_points if weights is None else list(weights)
    _check_weights(layout, weights)
    net = _new_net(layout, f"{stage.name}_{data.source}")
    image, landmarks, inv_iod = _data_layers(net, layout, data)
    x = trunk(net, image, layout, stage.frozen, variant, frozen_bn)
    out = PRE_BM_SHAPE_LAYER if variant == "pre_bm" else SHAPE_LAYER
    _inner_product(net, out, x, 2 * layout.n_points)
    eq4_loss(net, out, landmarks, inv_iod, weights)
    return net


def heads_net(layout: Layout, stage: Stage, clusters=None, data: DataSpec = DataSpec(),
              weights: dict | None = None, frozen_bn: str = "global"):
    """Multi-center fine-tuning (steps 4..3+m): the fixed trunk and one head per cluster.

    Each head is an InnerProduct D -> 2n with its own loss layers weighted by
    Eq. 9 for its cluster. With all clusters the heads train jointly on the same
    batches; with one cluster this is the single-head net of a separate run.
    """
    clusters = list(layout.cluster_names if clusters is None else clusters)
    for c in clusters:
        layout.cluster(c)
    weights = weights or {c: [1.0] * layout.n_points for c in clusters}
    what = "heads" if len(clusters) == layout.m else "head_" + "_".join(clusters)
    net = _new_net(layout, f"{what}_{data.source}")
    image, landmarks, inv_iod = _data_layers(net, layout, data)
    x = trunk(net, image, layout, stage.frozen, frozen_bn=frozen_bn)
    gt_slices = None
    for c in clusters:
        _check_weights(layout, weights[c])
        head = _inner_product(net, head_layer_name(c), x, 2 * layout.n_points)
        gt_slices = eq4_loss(net, head, landmarks, inv_iod, weights[c], cluster=c, gt_slices=gt_slices)
    return net


def deploy_net(layout: Layout, variant: str = "bm", clusters=None):
    """Test-time net: Input 1x1x50x50, no loss. With `clusters`, one output per head.

    The assembled model (AM) uses the plain BM deploy net: one shape layer.
    """
    what = "deploy" if variant == "bm" else f"{variant}_deploy"
    if clusters:
        what = "heads_deploy"
    net = _new_net(layout, what)
    image = _input_layer(net)
    x = trunk(net, image, layout, (), variant)
    if clusters:
        for c in clusters:
            _inner_product(net, head_layer_name(c), x, 2 * layout.n_points)
    else:
        _inner_product(net, PRE_BM_SHAPE_LAYER if variant == "pre_bm" else SHAPE_LAYER, x, 2 * layout.n_points)
    return net


def _check_weights(layout: Layout, weights) -> None:
    if len(weights) != layout.n_points:
        raise ValueError(f"layout {layout.name} has {layout.n_points} landmarks, got {len(weights)} loss weights")


def to_text(msg) -> str:
    return text_format.MessageToString(msg)


def parse_net(text: str):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def loss_weights_of(net_param) -> dict[str, float]:
    """Loss top -> its loss_weight (EuclideanLoss; Caffe's default 1): the terms of Eq. 4's total."""
    return {top: (lay.loss_weight[0] if len(lay.loss_weight) else 1.0)
            for lay in net_param.layer if lay.type == "EuclideanLoss" for top in lay.top}


def is_shape_layer(name: str) -> bool:
    """Whether a layer name is one of the shape prediction layers netgen writes (D -> 2n): the single
    shape layer, a head's (head_layer_name) or pre-BM's."""
    return name in (SHAPE_LAYER, PRE_BM_SHAPE_LAYER) or name.startswith(f"{SHAPE_LAYER}_")


def shape_points(net) -> int:
    """n, the landmarks a net predicts: half the num_output of its shape prediction layers (METHOD §2),
    which must all agree. ValueError naming the net where it has none, or they disagree."""
    sizes = {lay.name: int(lay.inner_product_param.num_output) for lay in net.layer
             if lay.type == "InnerProduct" and is_shape_layer(lay.name)}
    label = f"net {net.name!r}" if net.name else "the net"
    if not sizes:
        raise ValueError(f"{label} has no shape prediction layer ({SHAPE_LAYER}, {head_layer_name('<cluster>')} "
                         f"or {PRE_BM_SHAPE_LAYER}) to tell how many landmarks it predicts")
    values = set(sizes.values())
    if len(values) != 1 or min(values) % 2 or not min(values):
        raise ValueError(f"{label}: its shape prediction layers do not predict one whole number of landmarks "
                         f"(num_output: {', '.join(f'{k} {v}' for k, v in sizes.items())})")
    return min(values) // 2
