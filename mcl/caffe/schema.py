"""The part of Caffe's caffe.proto the project reads (nets, models, solvers, solver states, LMDB Datums),
for machines with no Caffe at all.

Field numbers, types and defaults are Caffe's own (src/caffe/proto/caffe.proto, BVLC 1.0),
so a caffemodel or prototxt parses to the same values; fields outside this subset are
kept as unknown fields (binary) or skipped (text). tests/test_port_schema.py checks
every field here against the caffe_pb2 that Caffe generates.
"""

from __future__ import annotations

import re
import types

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
}
NESTED_ENUMS = {
    "SolverParameter": {"SnapshotFormat": [("HDF5", 0), ("BINARYPROTO", 1)],
                        "SolverMode": [("CPU", 0), ("GPU", 1)],
                        "SolverType": [("SGD", 0), ("NESTEROV", 1), ("ADAGRAD", 2), ("RMSPROP", 3), ("ADADELTA", 4), ("ADAM", 5)]},
    "FillerParameter": {"VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)]},
    "ParamSpec": {"DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)]},
    "ConvolutionParameter": {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]},
    "PoolingParameter": {"PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
                         "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
                         "RoundMode": [("CEIL", 0), ("FLOOR", 1)]},
    "ReLUParameter": {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]},
    "DataParameter": {"DB": [("LEVELDB", 0), ("LMDB", 1)]},
    "EltwiseParameter": {"EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)]},
    "V1LayerParameter": {"LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
        ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8), ("HDF5_DATA", 9),
        ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12), ("INFOGAIN_LOSS", 13),
        ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29), ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34),
        ("POOLING", 17), ("POWER", 26), ("RELU", 18), ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27),
        ("SILENCE", 36), ("SOFTMAX", 20), ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23),
        ("WINDOW_DATA", 24), ("THRESHOLD", 31)]},
}

# "label type name = number [default]"; `packed` as Caffe declares it.
MESSAGES = {
    "BlobShape": ["repeated int64 dim = 1 packed"],
    "BlobProto": ["optional BlobShape shape = 7", "repeated float data = 5 packed", "repeated float diff = 6 packed",
                  "repeated double double_data = 8 packed", "repeated double double_diff = 9 packed",
                  "optional int32 num = 1 [0]", "optional int32 channels = 2 [0]", "optional int32 height = 3 [0]",
                  "optional int32 width = 4 [0]"],
    "NetParameter": ["optional string name = 1", "repeated string input = 3", "repeated BlobShape input_shape = 8",
                     "repeated int32 input_dim = 4", "optional bool force_backward = 5 [false]",
                     "optional NetState state = 6", "optional bool debug_info = 7 [false]",
                     "repeated LayerParameter layer = 100", "repeated V1LayerParameter layers = 2"],
    "NetState": ["optional Phase phase = 1 [TEST]", "optional int32 level = 2 [0]", "repeated string stage = 3"],
    "NetStateRule": ["optional Phase phase = 1", "optional int32 min_level = 2", "optional int32 max_level = 3",
                     "repeated string stage = 4", "repeated string not_stage = 5"],
    "ParamSpec": ["optional string name = 1", "optional ParamSpec.DimCheckMode share_mode = 2",
                  "optional float lr_mult = 3 [1.0]", "optional float decay_mult = 4 [1.0]"],
    "FillerParameter": ["optional string type = 1 [constant]", "optional float value = 2 [0]",
                        "optional float min = 3 [0]", "optional float max = 4 [1]", "optional float mean = 5 [0]",
                        "optional float std = 6 [1]", "optional int32 sparse = 7 [-1]",
                        "optional FillerParameter.VarianceNorm variance_norm = 8 [FAN_IN]"],
    "LayerParameter": ["optional string name = 1", "optional string type = 2", "repeated string bottom = 3",
                       "repeated string top = 4", "optional Phase phase = 10", "repeated float loss_weight = 5",
                       "repeated ParamSpec param = 6", "repeated BlobProto blobs = 7",
                       "repeated bool propagate_down = 11", "repeated NetStateRule include = 8",
                       "repeated NetStateRule exclude = 9",
                       "optional TransformationParameter transform_param = 100",
                       "optional BatchNormParameter batch_norm_param = 139",
                       "optional ConcatParameter concat_param = 104",
                       "optional ConvolutionParameter convolution_param = 106",
                       "optional DataParameter data_param = 107", "optional DropoutParameter dropout_param = 108",
                       "optional EltwiseParameter eltwise_param = 110", "optional FlattenParameter flatten_param = 135",
                       "optional HDF5DataParameter hdf5_data_param = 112",
                       "optional InnerProductParameter inner_product_param = 117",
                       "optional InputParameter input_param = 143", "optional PoolingParameter pooling_param = 121",
                       "optional ReLUParameter relu_param = 123", "optional ReshapeParameter reshape_param = 133",
                       "optional ScaleParameter scale_param = 142", "optional SliceParameter slice_param = 126"],
    "V1LayerParameter": ["repeated string bottom = 2", "repeated string top = 3", "optional string name = 4",
                         "repeated NetStateRule include = 32", "repeated NetStateRule exclude = 33",
                         "optional V1LayerParameter.LayerType type = 5", "repeated BlobProto blobs = 6",
                         "repeated string param = 1001", "repeated float blobs_lr = 7",
                         "repeated float weight_decay = 8", "repeated float loss_weight = 35",
                         "optional ConcatParameter concat_param = 9",
                         "optional ConvolutionParameter convolution_param = 10",
                         "optional DataParameter data_param = 11", "optional DropoutParameter dropout_param = 12",
                         "optional EltwiseParameter eltwise_param = 24",
                         "optional HDF5DataParameter hdf5_data_param = 13",
                         "optional InnerProductParameter inner_product_param = 17",
                         "optional PoolingParameter pooling_param = 19", "optional ReLUParameter relu_param = 30",
                         "optional SliceParameter slice_param = 31",
                         "optional TransformationParameter transform_param = 36"],
    "TransformationParameter": ["optional float scale = 1 [1]", "optional bool mirror = 2 [false]",
                                "optional uint32 crop_size = 3 [0]", "optional string mean_file = 4",
                                "repeated float mean_value = 5", "optional bool force_color = 6 [false]",
                                "optional bool force_gray = 7 [false]"],
    "BatchNormParameter": ["optional bool use_global_stats = 1", "optional float moving_average_fraction = 2 [0.999]",
                           "optional float eps = 3 [1e-5]"],
    "ConcatParameter": ["optional int32 axis = 2 [1]", "optional uint32 concat_dim = 1 [1]"],
    "ConvolutionParameter": ["optional uint32 num_output = 1", "optional bool bias_term = 2 [true]",
                             "repeated uint32 pad = 3", "repeated uint32 kernel_size = 4", "repeated uint32 stride = 6",
                             "repeated uint32 dilation = 18", "optional uint32 pad_h = 9 [0]",
                             "optional uint32 pad_w = 10 [0]", "optional uint32 kernel_h = 11",
                             "optional uint32 kernel_w = 12", "optional uint32 stride_h = 13",
                             "optional uint32 stride_w = 14", "optional uint32 group = 5 [1]",
                             "optional FillerParameter weight_filler = 7", "optional FillerParameter bias_filler = 8",
                             "optional ConvolutionParameter.Engine engine = 15 [DEFAULT]",
                             "optional int32 axis = 16 [1]", "optional bool force_nd_im2col = 17 [false]"],
    "DataParameter": ["optional string source = 1", "optional uint32 batch_size = 4", "optional uint32 rand_skip = 7 [0]",
                      "optional DataParameter.DB backend = 8 [LEVELDB]", "optional float scale = 2 [1]",
                      "optional string mean_file = 3", "optional uint32 crop_size = 5 [0]",
                      "optional bool mirror = 6 [false]", "optional bool force_encoded_color = 9 [false]",
                      "optional uint32 prefetch = 10 [4]"],
    "DropoutParameter": ["optional float dropout_ratio = 1 [0.5]"],
    "EltwiseParameter": ["optional EltwiseParameter.EltwiseOp operation = 1 [SUM]", "repeated float coeff = 2",
                         "optional bool stable_prod_grad = 3 [true]"],
    "FlattenParameter": ["optional int32 axis = 1 [1]", "optional int32 end_axis = 2 [-1]"],
    "HDF5DataParameter": ["optional string source = 1", "optional uint32 batch_size = 2",
                          "optional bool shuffle = 3 [false]"],
    "InnerProductParameter": ["optional uint32 num_output = 1", "optional bool bias_term = 2 [true]",
                              "optional FillerParameter weight_filler = 3", "optional FillerParameter bias_filler = 4",
                              "optional int32 axis = 5 [1]", "optional bool transpose = 6 [false]"],
    "InputParameter": ["repeated BlobShape shape = 1"],
    "PoolingParameter": ["optional PoolingParameter.PoolMethod pool = 1 [MAX]", "optional uint32 pad = 4 [0]",
                         "optional uint32 pad_h = 9 [0]", "optional uint32 pad_w = 10 [0]",
                         "optional uint32 kernel_size = 2", "optional uint32 kernel_h = 5",
                         "optional uint32 kernel_w = 6", "optional uint32 stride = 3 [1]",
                         "optional uint32 stride_h = 7", "optional uint32 stride_w = 8",
                         "optional PoolingParameter.Engine engine = 11 [DEFAULT]",
                         "optional bool global_pooling = 12 [false]",
                         "optional PoolingParameter.RoundMode round_mode = 13 [CEIL]"],
    "ReLUParameter": ["optional float negative_slope = 1 [0]", "optional ReLUParameter.Engine engine = 2 [DEFAULT]"],
    "ReshapeParameter": ["optional BlobShape shape = 1", "optional int32 axis = 2 [0]",
                         "optional int32 num_axes = 3 [-1]"],
    "ScaleParameter": ["optional int32 axis = 1 [1]", "optional int32 num_axes = 2 [1]",
                       "optional FillerParameter filler = 3", "optional bool bias_term = 4 [false]",
                       "optional FillerParameter bias_filler = 5"],
    "SolverParameter": ["optional string net = 24", "optional NetParameter net_param = 25",
                        "optional string train_net = 1", "repeated string test_net = 2",
                        "optional NetParameter train_net_param = 21",
                        "repeated NetParameter test_net_param = 22", "optional NetState train_state = 26",
                        "repeated NetState test_state = 27", "repeated int32 test_iter = 3",
                        "optional int32 test_interval = 4 [0]", "optional bool test_compute_loss = 19 [false]",
                        "optional bool test_initialization = 32 [true]", "optional float base_lr = 5",
                        "optional int32 display = 6", "optional int32 average_loss = 33 [1]",
                        "optional int32 max_iter = 7", "optional int32 iter_size = 36 [1]",
                        "optional string lr_policy = 8", "optional float gamma = 9",
                        "optional float power = 10", "optional float momentum = 11",
                        "optional float weight_decay = 12", "optional string regularization_type = 29 [L2]",
                        "optional int32 stepsize = 13", "repeated int32 stepvalue = 34",
                        "optional float clip_gradients = 35 [-1]", "optional int32 snapshot = 14 [0]",
                        "optional string snapshot_prefix = 15", "optional bool snapshot_diff = 16 [false]",
                        "optional SolverParameter.SnapshotFormat snapshot_format = 37 [BINARYPROTO]",
                        "optional SolverParameter.SolverMode solver_mode = 17 [GPU]",
                        "optional int32 device_id = 18 [0]", "optional int64 random_seed = 20 [-1]",
                        "optional string type = 40 [SGD]", "optional float delta = 31 [1e-08]",
                        "optional float momentum2 = 39 [0.999]", "optional float rms_decay = 38 [0.99]",
                        "optional bool debug_info = 23 [false]",
                        "optional bool snapshot_after_train = 28 [true]",
                        "optional SolverParameter.SolverType solver_type = 30 [SGD]",
                        "optional bool layer_wise_reduce = 41 [true]", "repeated string weights = 42"],
    "SolverState": ["optional int32 iter = 1", "optional string learned_net = 2",
                    "repeated BlobProto history = 3", "optional int32 current_step = 4 [0]"],
    "Datum": ["optional int32 channels = 1", "optional int32 height = 2", "optional int32 width = 3",
              "optional bytes data = 4", "optional int32 label = 5", "repeated float float_data = 6",
              "optional bool encoded = 7 [false]"],
    "SliceParameter": ["optional int32 axis = 3 [1]", "repeated uint32 slice_point = 2",
                       "optional uint32 slice_dim = 1 [1]"],
}

FIELD = re.compile(r"^(optional|repeated) (\S+) (\w+) = (\d+)(?: \[(.*)\])?( packed)?$")
F = descriptor_pb2.FieldDescriptorProto
SCALARS = {"string": F.TYPE_STRING, "bool": F.TYPE_BOOL, "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE,
           "int32": F.TYPE_INT32, "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32, "bytes": F.TYPE_BYTES}


def _enum(proto, name, values):
    e = proto.enum_type.add(name=name)
    for n, v in values:
        e.value.add(name=n, number=v)


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="mcl_caffe_subset.proto", package="caffe", syntax="proto2")
    for name, values in ENUMS.items():
        _enum(fd, name, values)
    enum_names = set(ENUMS) | {f"{m}.{e}" for m, es in NESTED_ENUMS.items() for e in es}
    for name, fields in MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for ename, values in NESTED_ENUMS.get(name, {}).items():
            _enum(msg, ename, values)
        for spec in fields:
            label, kind, fname, number, default, packed = FIELD.match(spec).groups()
            f = msg.field.add(name=fname, number=int(number),
                              label=F.LABEL_REPEATED if label == "repeated" else F.LABEL_OPTIONAL)
            if kind in SCALARS:
                f.type = SCALARS[kind]
            else:
                f.type = F.TYPE_ENUM if kind in enum_names else F.TYPE_MESSAGE
                f.type_name = f".caffe.{kind}"
            if default is not None:
                f.default_value = default
            if packed:
                f.options.packed = True
    return fd


_MODULE = None


def module():
    """A caffe_pb2 look-alike: the message classes, and the top-level enum values (TRAIN, TEST)."""
    global _MODULE
    if _MODULE is None:
        pool = descriptor_pool.DescriptorPool()
        fdesc = pool.Add(file_descriptor())
        desc = pool.FindFileByName(fdesc.name) if not hasattr(fdesc, "message_types_by_name") else fdesc
        mod = types.ModuleType("mcl_caffe_subset_pb2", "caffe.proto subset built by mcl.caffe.schema")
        mod.DESCRIPTOR = desc
        for name in MESSAGES:
            setattr(mod, name, message_factory.GetMessageClass(desc.message_types_by_name[name]))
        for name, values in ENUMS.items():
            for n, v in values:
                setattr(mod, n, v)
        mod.BUILTIN = True
        _MODULE = mod
    return _MODULE
