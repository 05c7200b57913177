"""Porting on a machine with no Caffe at all: the built-in subset of caffe.proto agrees with
Caffe's generated caffe_pb2 field by field, and a port made with it equals the usual one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import ROOT
from google.protobuf import text_format
from test_port import V1_NET, authors_extended, caffe_model

from mcl.caffe import schema as caffe_schema
from mcl.caffe.proto import caffe_pb2 as real
from mcl.port import convert


def _key(f):
    return (f.number, f.type, f.label, f.has_default_value, f.default_value if f.has_default_value else None,
            f.message_type.name if f.message_type else None,
            f.enum_type.full_name.split(".", 1)[1] if f.enum_type else None, f.GetOptions().packed)


def test_builtin_subset_matches_caffes_own_caffe_pb2():
    sub = caffe_schema.module()
    assert getattr(real, "BUILTIN", False) is False  # here the real one is loaded
    checked = 0
    for name in caffe_schema.MESSAGES:
        mine, caffes = sub.DESCRIPTOR.message_types_by_name[name], real.DESCRIPTOR.message_types_by_name[name]
        for f in mine.fields:
            assert f.name in caffes.fields_by_name, (name, f.name)
            assert _key(f) == _key(caffes.fields_by_name[f.name]), (name, f.name)
            checked += 1
        for e in mine.enum_types:
            assert [(v.name, v.number) for v in e.values] == \
                [(v.name, v.number) for v in caffes.enum_types_by_name[e.name].values], (name, e.name)
    assert checked > 150 and sub.TRAIN == real.TRAIN and sub.TEST == real.TEST


def test_port_without_any_caffe_equals_the_usual_port(caffe, tmp_path):
    """`caffe` hidden entirely: the subset parses the authors' tab-indented text (fields it does
    not know are skipped), the caffemodel, and a V1 file; the ONNX equals the usual port's."""
    proto, model, _ = caffe_model(caffe, tmp_path / "m", authors_extended(), seed=2)
    text = proto.read_text().replace("\tconvolution_param {", "\tloss_param {\n\t\tignore_label: 3\n\t}\n"
                                     "\tconvolution_param {", 1)  # a field outside the subset
    proto.write_text(text)
    usual = convert.port(proto, model, formats=("onnx",), reference="opencv")
    out = tmp_path / "out"
    code = ("import sys, json; sys.modules['caffe'] = None; sys.path.insert(0, 'tools'); "
            "from mcl.caffe import proto; assert getattr(proto.caffe_pb2, 'BUILTIN', False), proto.SOURCE; "
            "import port; "
            f"sys.exit(port.main(['export', '--prototxt', {str(proto)!r}, '--caffemodel', {str(model)!r}, "
            f"'--out', {str(out)!r}, '--formats', 'onnx,npz', '--fold']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((out / "model.onnx.json").read_text())
    assert card["check"]["reference"] == "opencv" and card["folded_batchnorm"]
    first = usual.cards["model.onnx.json"]["check"]["reference_output_first_face"]["fc6"]
    assert card["check"]["reference_output_first_face"]["fc6"] == first
    blobs = convert.read_npz(out / "model.npz")
    assert "conv11_bn" not in blobs and blobs["conv11"][1].shape == (32,)  # folded, biases added
    # a V1 caffemodel read with the subset, blob for blob as with Caffe's own schema
    v1 = text_format.Parse(V1_NET, real.NetParameter())
    for lay in v1.layers:
        if lay.name in ("conv1", "fc"):
            b = lay.blobs.add()
            b.num, b.channels, b.height, b.width = 1, 1, 1, 3
            b.data.extend([1.0, 2.0, 3.0])
    sub = caffe_schema.module().NetParameter()
    sub.ParseFromString(v1.SerializeToString())
    assert [(lay.name, caffe_schema.module().V1LayerParameter.LayerType.Name(lay.type)) for lay in sub.layers] == \
        [("conv1", "CONVOLUTION"), ("relu1", "RELU"), ("pool1", "POOLING"), ("fc", "INNER_PRODUCT")]
    assert np.array_equal(convert.blob_array(sub.layers[3].blobs[0]), np.array([[[[1, 2, 3]]]], np.float32))
