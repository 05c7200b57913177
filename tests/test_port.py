"""The port (mcl.port.convert, tools/port.py) beside real Caffe and OpenCV dnn: PyTorch and
ONNX Runtime equal Caffe within 1e-4 layer by layer and at the output, with and without
BatchNorm folding, for our nets and for nets written by others; the way back is exact;
a V1 caffemodel is read; bad input exits 2 naming the layer, with nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from mcl import torchnet
from mcl.caffe import netgen
from mcl.method.layouts import get_layout
from mcl.port import convert
from mcl.torchnet import random_blobs

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def load_tool(name, folder: str = "tools"):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def caffe_model(caffe, folder, text: str, seed: int, stem: str = "model", zero_bn: str | None = None):
    """A prototxt and a caffemodel saved by Caffe itself, with random non-trivial blobs."""
    folder.mkdir(parents=True, exist_ok=True)
    proto = folder / f"{stem}.prototxt"
    proto.write_text(text)
    tnet = torchnet.from_netparameter(convert.parse_prototxt(text), "TEST")
    blobs = random_blobs(tnet, seed)
    if zero_bn:
        blobs[zero_bn][2][...] = 0
    net = caffe.Net(str(proto), caffe.TEST)
    for layer, arrays in blobs.items():
        for p, a in zip(net.params[layer], arrays):
            p.data[...] = a.reshape(p.data.shape)
    model = folder / f"{stem}.caffemodel"
    net.save(str(model))
    return proto, model, net


def caffe_layer_by_layer(cnet, x, tnet):
    """{'<layer>/<top>': Caffe's value after net.forward(end=layer)} for every layer."""
    name = tnet.input_names[0]
    cnet.blobs[name].reshape(*x.shape)
    cnet.blobs[name].data[...] = x
    out = {}
    for s in tnet.specs:
        if s.type in torchnet.INPUT_TYPES:
            continue
        cnet.forward(end=s.name)
        for t in s.tops:
            out[f"{s.name}/{t}"] = cnet.blobs[t].data.copy()
    return out


def assert_layer_by_layer(caffe_values, tnet, x, onnx=True):
    record = []
    with torch.no_grad():
        tnet({tnet.input_names[0]: torch.from_numpy(x)}, record=record)
    torch_values = {f"{layer}/{top}": v.numpy() for layer, top, v in record}
    assert list(torch_values) == list(caffe_values)
    engines = {"torch": torch_values}
    if onnx:
        data = convert.onnx_bytes(tnet, [], every_layer=True)
        names = convert.layer_outputs(tnet)
        engines["onnxruntime"] = convert.onnx_forward(data, x, names)
    for engine, values in engines.items():
        for key, want in caffe_values.items():
            np.testing.assert_allclose(values[key].reshape(want.shape), want, rtol=0, atol=ATOL,
                                       err_msg=f"{engine}: {key}")


def deploy_text(layout_name: str, variant: str) -> str:
    layout = get_layout(layout_name)
    if variant == "heads":
        return netgen.to_text(netgen.deploy_net(layout, clusters=layout.cluster_names))
    return netgen.to_text(netgen.deploy_net(layout, variant=variant))


# ---- nets written by others ------------------------------------------------------------------

def tab_net(name: str, layers: list[tuple], header: str) -> str:
    """Deploy text in the authors' style: tab indentation, one field per line."""
    def block(fields, depth):
        lines = []
        for key, value in fields:
            if isinstance(value, list):
                lines.append("\t" * depth + f"{key} {{")
                lines += block(value, depth + 1)
                lines.append("\t" * depth + "}")
            else:
                if isinstance(value, bool):
                    v = str(value).lower()
                else:
                    v = f'"{value}"' if isinstance(value, str) and not value.isupper() else value
                lines.append("\t" * depth + f"{key}: {v}")
        return lines
    out = [f'name: "{name}"', header]
    for fields in layers:
        out.append("layer {")
        out += block(fields, 1)
        out.append("}")
    return "\n".join(out) + "\n"


def _conv_stack(convs):
    layers, bottom = [], "data"
    for conv, width, pool in convs:
        layers.append([("name", conv), ("type", "Convolution"), ("bottom", bottom), ("top", conv),
                       ("param", [("lr_mult", 1), ("decay_mult", 1)]), ("param", [("lr_mult", 2), ("decay_mult", 0)]),
                       ("convolution_param", [("num_output", width), ("pad", 1), ("kernel_size", 3), ("stride", 1),
                                              ("weight_filler", [("type", "msra")])])])
        layers.append([("name", f"{conv}_bn"), ("type", "BatchNorm"), ("bottom", conv), ("top", conv)])
        layers.append([("name", f"{conv}_bn_scale"), ("type", "Scale"), ("bottom", conv), ("top", conv),
                       ("scale_param", [("bias_term", True)])])
        layers.append([("name", f"ReLU{conv[4:]}"), ("type", "ReLU"), ("bottom", conv), ("top", conv)])
        bottom = conv
        if pool:
            layers.append([("name", pool), ("type", "Pooling"), ("bottom", conv), ("top", pool),
                           ("pooling_param", [("pool", "MAX"), ("kernel_size", 2), ("stride", 2)])])
            bottom = pool
    return layers, bottom


def _ip(name, bottom, n):
    return [("name", name), ("type", "InnerProduct"), ("bottom", bottom), ("top", name),
            ("inner_product_param", [("num_output", n)])]


def authors_extended(n_points=5, d=512) -> str:
    """The released extended model's shape: conv43 -> pool4 (AVE, kernel 7, stride 1) -> fc6;
    BatchNorm layers without batch_norm_param; net-level `input` / `input_dim`."""
    convs = [("conv11", 32, None), ("conv12", 32, "pool1"), ("conv21", 64, None), ("conv22", 64, "pool2"),
             ("conv31", 96, None), ("conv32", 96, "pool3"), ("conv41", 128, None), ("conv42", 128, None),
             ("conv43", d, None)]
    layers, bottom = _conv_stack(convs)
    layers.append([("name", "pool4"), ("type", "Pooling"), ("bottom", bottom), ("top", "pool4"),
                   ("pooling_param", [("pool", "AVE"), ("kernel_size", 7), ("stride", 1)])])
    layers.append(_ip("fc6", "pool4", 2 * n_points))
    header = 'input: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 50\ninput_dim: 50'
    return tab_net("MCL_extended_deploy", layers, header)


def authors_conference(n_points=68, d=1024) -> str:
    """The conference version: conv42 -> pool4 (MAX 2/2, 7 -> 4) -> fc5 (no nonlinearity) -> fc6."""
    convs = [("conv11", 32, None), ("conv12", 32, "pool1"), ("conv21", 64, None), ("conv22", 64, "pool2"),
             ("conv31", 96, None), ("conv32", 96, "pool3"), ("conv41", 128, None), ("conv42", 128, "pool4")]
    layers, bottom = _conv_stack(convs)
    layers.append(_ip("fc5", bottom, d))
    layers.append(_ip("fc6", "fc5", 2 * n_points))
    header = ('layer {\n\tname: "input"\n\ttype: "Input"\n\ttop: "data"\n\tinput_param {\n\t\tshape {\n'
              '\t\t\tdim: 1\n\t\t\tdim: 1\n\t\t\tdim: 50\n\t\t\tdim: 50\n\t\t}\n\t}\n}')
    return tab_net("MCL_conference_deploy", layers, header)


NETS = {
    **{f"{v}-{n}": (lambda n=n, v=v: deploy_text(n, v)) for n in ("5", "29", "68") for v in ("bm", "pre_bm", "heads")},
    "authors-extended": authors_extended,
    "authors-conference": authors_conference,
}


@pytest.mark.parametrize("net_name", list(NETS))
def test_port_equals_caffe_opencv_layer_by_layer_with_and_without_folding(caffe, tmp_path, net_name):
    text = NETS[net_name]()
    if net_name.startswith("authors"):
        assert "\t" in text and "batch_norm_param" not in text
    proto, model, cnet = caffe_model(caffe, tmp_path, text, seed=len(net_name))
    # the whole port, unfolded and folded: every engine against Caffe at the outputs
    for fold in (False, True):
        res = convert.port(proto, model, fold=fold, reference="caffe")
        assert res.reference == "caffe"
        engines = {"opencv", "torch", "onnxruntime"} | ({"torch (folded)"} if fold else set())
        assert set(res.diffs) == engines
        for engine, diffs in res.diffs.items():
            assert max(diffs.values()) <= ATOL, (engine, diffs)
        card = res.cards["model.onnx.json"]
        assert card["check"]["reference"] == "caffe" and bool(card["folded_batchnorm"]) == fold
        if fold:
            folded = convert.parse_prototxt(res.files["model.prototxt"].decode())
            assert not any(lay.type in ("BatchNorm", "Scale") for lay in folded.layer)
    # layer by layer, torch and ONNX Runtime against Caffe (the big nets at their outputs only, above)
    if net_name.split("-")[0] in ("bm", "authors") or net_name == "pre_bm-5":
        cm, tnet = convert.read_model(proto, model)
        x = convert.check_input(tnet)
        assert_layer_by_layer(caffe_layer_by_layer(cnet, x, tnet), tnet, x)


def test_folded_model_runs_in_caffe_and_equals_unfolded(caffe, tmp_path):
    proto, model, cnet = caffe_model(caffe, tmp_path, deploy_text("5", "bm"), seed=11)
    cm, tnet = convert.read_model(proto, model)
    folded, blobs, removed = convert.fold_batchnorm(cm.net_param, cm.blobs)
    assert len(removed) == 18 and "conv11_bn" in removed and "conv11_bn_scale" in removed
    fproto = tmp_path / "folded.prototxt"
    fproto.write_text(convert.netgen_text(folded))
    fmodel = tmp_path / "folded.caffemodel"
    fmodel.write_bytes(convert.caffemodel_bytes(folded, blobs))
    x = convert.check_input(tnet, batch=3)
    want = convert.caffe_forward(proto.read_text(), model.read_bytes(), x, ["shape_pred"])["shape_pred"]
    got = convert.caffe_forward(fproto.read_text(), fmodel.read_bytes(), x, ["shape_pred"])["shape_pred"]
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_round_trip_caffemodel_torch_caffemodel_is_exact(caffe, tmp_path):
    proto, model, cnet = caffe_model(caffe, tmp_path / "src", deploy_text("68", "bm"), seed=3)
    tool = load_tool("port")
    out = tmp_path / "port"
    assert tool.main(["export", "--prototxt", str(proto), "--caffemodel", str(model), "--out", str(out),
                      "--formats", "pt"]) == 0
    back = tmp_path / "back.caffemodel"
    assert tool.main(["back", "--prototxt", str(out / "model.prototxt"), "--state-dict", str(out / "model.pt"),
                      "--out", str(back)]) == 0
    original, _ = convert.model_blobs(convert.parse_caffemodel(model.read_bytes()))
    again, _ = convert.model_blobs(convert.parse_caffemodel(back.read_bytes()))
    assert original.keys() == again.keys()
    for name in original:
        for a, b in zip(original[name], again[name]):
            assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b), name
    # Caffe reads the written caffemodel and computes exactly what it computed from the original
    x = convert.check_input(torchnet.from_netparameter(convert.parse_prototxt(proto.read_text())), batch=2)
    want = convert.caffe_forward(proto.read_text(), model.read_bytes(), x, ["shape_pred"])["shape_pred"]
    got = convert.caffe_forward(proto.read_text(), back.read_bytes(), x, ["shape_pred"])["shape_pred"]
    assert np.array_equal(got, want)
    # and the .pt rebuilds through torchnet as the card says
    net = convert.load_torch(out / "model.prototxt", out / "model.pt")
    with torch.no_grad():
        np.testing.assert_allclose(net({"data": torch.from_numpy(x)})["shape_pred"].numpy(), want, atol=ATOL)
    card = json.loads((out / "model.pt.json").read_text())
    assert card["source"]["caffemodel"]["sha256"] == convert.sha256(model.read_bytes())
    assert card["layout"] == "68" and card["outputs"][0]["shape"] == [1, 136]


V1_NET = """
name: "v1net"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 20 input_dim: 20
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 10 } }
"""


def test_v1_layers_caffemodel_is_read(caffe, tmp_path):
    """A V1 caffemodel (`layers`, enum types, legacy num/channels/height/width blobs) ported
    with a V2 prototxt and with its own V1 prototxt; Caffe upgrades it on load, as we do."""
    v1 = convert.parse_prototxt(V1_NET)
    tnet = torchnet.from_netparameter(v1)
    blobs = random_blobs(tnet, 4)
    model = convert.caffe_pb2.NetParameter()
    model.CopyFrom(v1)
    for lay in model.layers:
        for a in blobs.get(lay.name, []):
            legacy = (1,) * (4 - a.ndim) + a.shape
            b = lay.blobs.add()
            b.num, b.channels, b.height, b.width = legacy
            b.data.extend(a.ravel().tolist())
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(model.SerializeToString())
    read, types = convert.model_blobs(convert.parse_caffemodel(path.read_bytes()))
    assert types == {"conv1": "Convolution", "fc": "InnerProduct"} and read["fc"][0].shape == (1, 1, 10, 8 * 10 * 10)
    v1_proto = tmp_path / "v1.prototxt"
    v1_proto.write_text(V1_NET)
    v2_proto = tmp_path / "v2.prototxt"
    v2_proto.write_text(V1_NET.replace("layers {", "layer {").replace("CONVOLUTION", '"Convolution"')
                        .replace("RELU", '"ReLU"').replace("POOLING", '"Pooling"')
                        .replace("INNER_PRODUCT", '"InnerProduct"').replace("blobs_lr: 1 blobs_lr: 2", ""))
    for proto in (v1_proto, v2_proto):
        res = convert.port(proto, path, reference="caffe")
        for engine, diffs in res.diffs.items():
            assert max(diffs.values()) <= ATOL, (proto.name, engine, diffs)


# ---- bad input: exit 2, the layer named, nothing written -------------------------------------

@pytest.fixture(scope="module")
def good_pair(tmp_path_factory):
    import caffe
    caffe.set_mode_cpu()
    folder = tmp_path_factory.mktemp("pair")
    proto, model, _ = caffe_model(caffe, folder, deploy_text("5", "bm"), seed=7)
    return folder, proto, model


def run_export(tmp_path, proto, model, *extra):
    out = tmp_path / "out"
    code = load_tool("port").main(["export", "--prototxt", str(proto), "--caffemodel", str(model),
                                   "--out", str(out), *extra])
    return code, out


def test_bad_caffemodels_exit_2_and_write_nothing(tmp_path, good_pair, capsys):
    folder, proto, model = good_pair
    raw = model.read_bytes()
    cases = {
        "truncated.caffemodel": (raw[: len(raw) // 2], r"not a caffemodel|truncated"),
        "text.caffemodel": (proto.read_bytes(), r"not a caffemodel"),
        "solverstate.caffemodel": (bytes([0x08, 0x96, 0x01, 0x12, 0x04]) + b"abcd", r"not a caffemodel"),
        "empty.caffemodel": (b"", r"not a caffemodel"),
    }
    for fname, (data, pattern) in cases.items():
        path = tmp_path / fname
        path.write_bytes(data)
        code, out = run_export(tmp_path, proto, path)
        err = capsys.readouterr().err
        assert code == 2 and not out.exists(), fname
        assert fname in err and __import__("re").search(pattern, err), (fname, err)


def test_pair_disagreements_exit_2_naming_the_layer(caffe, tmp_path, good_pair, capsys):
    folder, proto, model = good_pair
    # a layer renamed in the caffemodel
    net = convert.parse_caffemodel(model.read_bytes())
    next(lay for lay in net.layer if lay.name == "conv43").name = "conv43_old"
    renamed = tmp_path / "renamed.caffemodel"
    renamed.write_bytes(net.SerializeToString())
    code, out = run_export(tmp_path, proto, renamed)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "no layer 'conv43'" in err
    # blobs of another layout: the 68-point prototxt with the 5-point model
    p68 = tmp_path / "deploy68.prototxt"
    p68.write_text(deploy_text("68", "bm"))
    code, out = run_export(tmp_path, p68, model)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "'conv43'" in err and "(512, 128, 3, 3)" in err
    # an unsupported layer type
    lrn = tmp_path / "lrn.prototxt"
    lrn.write_text(proto.read_text().replace('type: "ReLU"', 'type: "LRN"', 1))
    code, out = run_export(tmp_path, lrn, model)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "'ReLU11'" in err and "LRN" in err and "not supported" in err
    # the way back with a state_dict of another net
    sd = tmp_path / "other.pt"
    torch.save({"layers.conv11.weight": torch.zeros(3)}, sd)
    code = load_tool("port").main(["back", "--prototxt", str(proto), "--state-dict", str(sd),
                                   "--out", str(tmp_path / "x.caffemodel")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "x.caffemodel").exists() and "does not fit" in err


def test_zero_batchnorm_factor_refused_or_ported_as_caffe_computes(caffe, tmp_path, capsys):
    proto, model, cnet = caffe_model(caffe, tmp_path / "m", deploy_text("5", "bm"), seed=9, zero_bn="conv31_bn")
    code, out = run_export(tmp_path, proto, model)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "'conv31_bn'" in err and "scale factor 0" in err
    code, out = run_export(tmp_path, proto, model, "--allow-zero-bn-factor", "--reference", "caffe", "--fold")
    assert code == 0
    card = json.loads((out / "model.onnx.json").read_text())
    assert card["check"]["reference"] == "caffe" and card["folded_batchnorm"]
    # Caffe divides by sqrt(eps): outputs in the hundreds, compared to float32 resolution
    assert card["check"]["max_abs_diff"]["shape_pred"] <= card["check"]["allowed"]["shape_pred"]


def test_port_without_libcaffe_and_every_tool_has_help(tmp_path, good_pair):
    """The port needs protobuf only: with pycaffe's C++ module unloadable it still reads the
    pair, and checks against OpenCV dnn instead of Caffe."""
    folder, proto, model = good_pair
    out = tmp_path / "out"
    code = ("import sys, runpy; sys.modules['caffe._caffe'] = None; "
            f"sys.argv = ['port.py', 'export', '--prototxt', {str(proto)!r}, '--caffemodel', {str(model)!r}, "
            f"'--out', {str(out)!r}, '--formats', 'onnx']; "
            "runpy.run_path('tools/port.py', run_name='__main__')")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((out / "model.onnx.json").read_text())
    assert card["check"]["reference"] == "opencv" and max(card["check"]["max_abs_diff"].values()) <= ATOL
    for tool in ("tools/port.py", "tools/predict.py", "benchmarks/bench_port.py"):
        proc = subprocess.run([sys.executable, tool, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout, (tool, proc.stderr)


def test_the_layout_comes_from_the_shape_layer_or_the_run_never_from_the_net_name():
    net = netgen.deploy_net(get_layout(29))
    net.name = "mcl_68_deploy"  # a name is a label only
    assert convert.layout_of(net, {"shape_pred": (1, 58)}) == "29"
    assert convert.layout_of(net, {"shape_pred": (1, 58)}, "29") == "29"
    with pytest.raises(convert.PortError, match=r"the run's layout is 68 \(68 landmarks\), but the net predicts 29"):
        convert.layout_of(net, {"shape_pred": (1, 58)}, "68")
    heads = netgen.deploy_net(get_layout(5), clusters=get_layout(5).cluster_names)
    assert convert.layout_of(heads, {}) == "5"
    foreign = convert.parse_prototxt(V1_NET)  # no shape layer of ours: its outputs' size tells it
    assert convert.layout_of(foreign, {"out": (1, 10)}) == "5" and convert.layout_of(foreign, {"out": (1, 7)}) is None


def test_bench_port_refuses_a_model_and_faces_of_other_layouts():
    """A 5-point model against the built-in 68-point faces: a named error (exit 2), not a reshape failure."""
    model = ROOT / "models" / "mcl-5-mtfl"
    proc = subprocess.run([sys.executable, "benchmarks/bench_port.py", "--prototxt", str(model / "deploy.prototxt"),
                           "--caffemodel", str(model / "mcl-5-mtfl.caffemodel"), "--engines", "ort_int8",
                           "--rounds", "1", "--block", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "mcl-5-mtfl.caffemodel: a model of 5 landmarks" in proc.stderr and "have 68" in proc.stderr
    assert "give --run" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_port_int8_floor_and_whether_dlib_is_within_its_reach():
    """The int8 floor: the first convolution at the fp32 peak, the rest at the VNNI peak (by hand: 2 MFLOP at
    100 GFLOP/s is 0.02 ms, 4.001 GOP at 400 GOP/s 10.0025 ms); the report says where dlib is below it."""
    bp = load_tool("bench_port", "benchmarks")
    flops = {"conv11": 2_000_000, "conv12": 4_000_000_000, "fc": 1_000_000}
    peak = {"peak_gflops": 100.0, "int8_gops": 400.0, "int8_how": "by hand"}
    assert bp.int8_floor_ms(flops, peak) == pytest.approx(10.0225)
    assert bp.int8_floor_ms(flops, {"peak_gflops": 100.0}) is None  # no VNNI: no int8 floor
    single = {k: {"cpu_median_s": ms / 1e3, "median_s": ms / 1e3}
              for k, ms in (("ort_int8", 12.0), ("face_int8", 13.0), ("dlib_ert", 8.0))}
    acc = {"relative_change": 0.002, "mean_error_fp32": 0.08, "mean_error_int8": 0.0802, "int8_vs_fp32_shift": 0.004,
           "faces": 10}
    rep = bp.report({"single_core_batch1": single, "two_threads_batch64": {}}, flops, sum(flops.values()),
                    {**peak, "measured_gflops": 100.0, "measured_how": "by hand", "nominal_gflops": 90.0,
                     "nominal_how": "by hand"}, 0.04, acc, "m", "f", 64)
    face = rep["targets"]["face_int8_at_most_dlib"]
    assert not face["met"] and face["value"] == pytest.approx(13 / 8)
    assert face["int8_floor_over_dlib"] == pytest.approx(10.0225 / 8)
    assert {r["engine"]: round(r["vs_int8_floor"], 4) for r in rep["engines"] if "vs_int8_floor" in r} == \
        {"ort_int8": round(12 / 10.0225, 4), "face_int8": round(13 / 10.0225, 4)}
    text = bp.markdown({**rep, "load_average": [1.0, 1.0, 1.0]})
    assert "int8 floor: 10.02" in text and "1.25x dlib's time" in text
    assert "could not reach dlib here" in text


@pytest.mark.skipif(not (shutil.which("cc") and " avx512f " in Path("/proc/cpuinfo").read_text()),
                    reason="needs a C compiler and a CPU with AVX-512")
def test_peak_kernels_build_and_run():
    """Each of benchmarks/peaks.py's kernels the CPU has the instructions for builds and prints a figure, on one
    core and on two copies at once."""
    peaks = load_tool("peaks", "benchmarks")
    flags = set(Path("/proc/cpuinfo").read_text().split())
    kernels = [peaks.FP32_KERNEL] + [k for f, k in (("avx512_bf16", peaks.BF16_KERNEL),
                                                     ("avx512_vnni", peaks.INT8_KERNEL)) if f in flags]
    for kernel in kernels:
        for cores in ((0,), (0, 0)):
            runs = peaks.kernel_runs(kernel.replace("20000000L", "200000L"), ("-march=native",), 2, cores)
            assert runs is not None and len(runs) == 2 and all(r > 0 for r in runs)


@pytest.mark.skipif(not (shutil.which("cc") and " avx512f " in Path("/proc/cpuinfo").read_text()),
                    reason="needs a C compiler and a CPU with AVX-512")
def test_peaks_on_a_core_that_is_not_there_exit_2_naming_it():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peaks.py"), "--cores", "4095", "--tries", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "core 4095" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
