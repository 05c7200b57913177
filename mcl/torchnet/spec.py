"""A Caffe NetParameter read into the layers one phase runs: Caffe's include/exclude rules,
V1 `layers` upgraded to V2 type names, the net-level `input` as an Input layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from mcl.caffe.proto import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
INPUT_TYPES = ("Input", "HDF5Data", "Data")

# V1 (`layers`) type enum -> V2 type string, as Caffe's UpgradeV1LayerType does for the types we run.
V1_TYPES = {
    "CONVOLUTION": "Convolution", "POOLING": "Pooling", "RELU": "ReLU", "INNER_PRODUCT": "InnerProduct",
    "DATA": "Data", "HDF5_DATA": "HDF5Data", "EUCLIDEAN_LOSS": "EuclideanLoss", "SLICE": "Slice",
    "SPLIT": "Split", "FLATTEN": "Flatten", "CONCAT": "Concat", "ELTWISE": "Eltwise", "DROPOUT": "Dropout",
    "SILENCE": "Silence",
}


class NetError(ValueError):
    """A net or its blobs that cannot be run: names the layer and what is wrong."""


@dataclass
class LayerSpec:
    """What the module needs of one Caffe layer, from a V2 `layer` or a V1 `layers` entry."""
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: object  # the LayerParameter / V1LayerParameter message
    lr_mults: list[float] = field(default_factory=list)
    decay_mults: list[float] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)


def _state_meets_rule(rule, phase) -> bool:
    # Net::StateMeetsRule with level 0 and no stages.
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    return not len(rule.stage)


def _included(layer, phase) -> bool:
    # Net::FilterNet: include rules win when present, otherwise any matching exclude removes the layer.
    if len(layer.include):
        return any(_state_meets_rule(r, phase) for r in layer.include)
    return not any(_state_meets_rule(r, phase) for r in layer.exclude)


def layer_specs(net_param, phase: str = "TEST") -> list[LayerSpec]:
    """The net's layers for `phase` (V2 `layer` or V1 `layers`), the net-level `input` as an Input layer."""
    if phase not in PHASES:
        raise NetError(f"phase must be TRAIN or TEST, got {phase!r}")
    ph = PHASES[phase]
    if len(net_param.layer) and len(net_param.layers):
        raise NetError("net has both `layer` and V1 `layers` fields")
    specs = []
    if len(net_param.input):
        specs.append(LayerSpec("input", "Input", [], list(net_param.input), None))
    for lay in net_param.layer:
        if not _included(lay, ph):
            continue
        specs.append(LayerSpec(lay.name, lay.type, list(lay.bottom), list(lay.top), lay,
                               [p.lr_mult for p in lay.param], [p.decay_mult for p in lay.param],
                               list(lay.loss_weight)))
    for lay in net_param.layers:
        if not _included(lay, ph):
            continue
        enum = caffe_pb2.V1LayerParameter.LayerType.Name(lay.type)
        if enum not in V1_TYPES:
            raise NetError(f"layer {lay.name!r}: V1 layer type {enum} is not supported")
        specs.append(LayerSpec(lay.name, V1_TYPES[enum], list(lay.bottom), list(lay.top), lay,
                               list(lay.blobs_lr), list(lay.weight_decay), list(lay.loss_weight)))
    return specs


def net_input_shapes(net_param, specs: list[LayerSpec]) -> dict[str, tuple[int, ...]]:
    """Shapes of the net's inputs where the net gives them: the deprecated net-level inputs
    (`input_shape` or 4 x `input_dim` each), then the Input layers' `input_param`."""
    shapes = {}
    names = list(net_param.input)
    if len(net_param.input_shape):
        for name, s in zip(names, net_param.input_shape):
            shapes[name] = tuple(s.dim)
    elif len(net_param.input_dim):
        dims = list(net_param.input_dim)
        for i, name in enumerate(names):
            shapes[name] = tuple(dims[4 * i: 4 * i + 4])
    for s in specs:
        if s.type == "Input" and s.param is not None:
            ip = s.param.input_param
            if len(ip.shape) not in (0, 1, len(s.tops)):
                raise NetError(f"layer {s.name!r} (Input): {len(ip.shape)} shapes for {len(s.tops)} tops")
            for i, top in enumerate(s.tops):
                if len(ip.shape):
                    shapes[top] = tuple(ip.shape[0 if len(ip.shape) == 1 else i].dim)
    return shapes
