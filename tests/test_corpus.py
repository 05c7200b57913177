"""The bad-input corpus: every entry point against every bad input that applies to it.

Each case runs the tool as a user would and expects exit status 2, a message on stderr
that names the offending file (and the line or layer where there is one), no traceback,
and nothing under the final name of any output. The cases are parametrized by id
(`<tool>-<input>-<fault>`), so `pytest --collect-only -q tests/test_corpus.py` counts them.

Tools: data_prep/prepare.py, tools/make_nets.py, run_stage.py, compute_weights.py,
set_loss_weights.py, assemble.py, evaluate.py, port.py, bn_stats.py, audit.py (perturb),
predict.py, verify.py. Faults: a missing
file, an empty file, a truncated caffemodel, a file that is no NetParameter, a model of
another layout, a weights file for another net, HDF5 with a dataset missing or of the
wrong shape, NaN or infinite landmarks, a .pts with the wrong count, a degenerate or
out-of-image box, an empty split, an output folder that cannot be made (its parent is a
regular file: tests may run as root, where permissions stop no write).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_data_fixtures import write_300w, write_cofw_v73, write_generic, write_mtfl, write_pts_crlf
from test_verify import ROOT, tiny_run

PY = sys.executable


@dataclass
class Case:
    argv: list  # script path relative to the repository, then its arguments
    names: list[str]  # what stderr must name: the file, and its line or layer where there is one
    finals: list[Path] = field(default_factory=list)  # outputs that must not exist afterwards


class Ctx:
    """What a case builds its input from: a private folder, a copy of the tiny run."""

    def __init__(self, tmp: Path, factory):
        self.tmp = tmp
        self.factory = factory
        self._run = None

    @property
    def run(self) -> Path:
        if self._run is None:
            _, built = tiny_run(self.factory)
            self._run = self.tmp / "run"
            shutil.copytree(built, self._run)
        return self._run

    @property
    def other_layout_model(self) -> Path:
        """A 68-point BM for this 5-point run: random weights, BatchNorm statistics as
        after training (scale factor 1)."""
        path = self.factory.getbasetemp() / "other_layout" / "bm68.caffemodel"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            code = ("import caffe, sys; caffe.set_mode_cpu(); net = caffe.Net(sys.argv[1], caffe.TEST)\n"
                    "for name, layer in net.layer_dict.items():\n"
                    "    if layer.type == 'BatchNorm': net.params[name][2].data[...] = 1\n"
                    "net.save(sys.argv[2])")
            subprocess.run([PY, "-c", code, str(ROOT / "prototxt/68/deploy.prototxt"), str(path)], check=True,
                           capture_output=True, env=dict(os.environ, GLOG_minloglevel="2"))
        return path

    def other_layout_weights(self) -> Path:
        from mcl.method import loss_weights
        from mcl.method.layouts import get_layout
        path = self.tmp / "w68.json"
        path.write_text(json.dumps(loss_weights.document(get_layout(68), "eq5", weights=[1.0] * 68)))
        return path

    def blocked(self, *parts) -> Path:
        """A path below a regular file: no folder can be made there."""
        (self.tmp / "plain_file").write_text("a file, not a folder\n")
        return self.tmp.joinpath("plain_file", *parts)

    def empty(self, name: str) -> Path:
        path = self.tmp / name
        path.write_bytes(b"")
        return path

    def truncated(self, src: Path, name: str) -> Path:
        path = self.tmp / name
        data = src.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    def not_netparameter(self, name: str) -> Path:
        """A text prototxt saved under a caffemodel's name (a common mix-up)."""
        path = self.tmp / name
        path.write_bytes((self.run / "nets/deploy.prototxt").read_bytes())
        return path


def edit_h5(path: Path, drop: str | None = None, reshape: str | None = None, nan: str | None = None,
            inf: str | None = None) -> None:
    with h5py.File(path, "r+") as f:
        if drop:
            del f[drop]
        if reshape:
            data = f[reshape][...]
            del f[reshape]
            f[reshape] = data.reshape(len(data), -1)[:, :-1]
        for key, value in ((nan, np.nan), (inf, np.inf)):
            if key:
                data = f[key][...]
                data.reshape(-1)[1] = value
                f[key][...] = data


def no_data_manifest(run: Path) -> Path:
    """Data from elsewhere (no data/manifest.json): its contents are checked as such,
    not against checksums."""
    (run / "data" / "manifest.json").unlink()
    return run


# ---- data_prep/prepare.py -------------------------------------------------------------------

PREP = "data_prep/prepare.py"


def _prep(ctx: Ctx, dataset: str, root: Path, *extra) -> list:
    return [PREP, "--dataset", dataset, "--data-root", root, "--out", ctx.tmp / "out" / "data", "--quiet",
            "--copies", "2", *extra]


def _w300(ctx: Ctx) -> Path:
    root = ctx.tmp / "300w"
    write_300w(str(root), per_subset=2)
    return root


def _cofw(ctx: Ctx, n: int = 3) -> Path:
    root = ctx.tmp / "cofw"
    root.mkdir()
    write_cofw_v73(str(root / "COFW_train_color.mat"), "train", n=n)
    write_cofw_v73(str(root / "COFW_test_color.mat"), "test", n=2)
    return root


def _mtfl(ctx: Ctx) -> Path:
    root = ctx.tmp / "mtfl"
    write_mtfl(str(root), n=3)
    return root


def _generic(ctx: Ctx) -> Path:
    root = ctx.tmp / "generic"
    write_generic(str(root), n=3)
    return root


def _prep_case(ctx: Ctx, dataset: str, root: Path, names: list[str], *extra) -> Case:
    return Case(_prep(ctx, dataset, root, *extra), names, [ctx.tmp / "out" / "data"])


def p_missing_root(ctx):
    return _prep_case(ctx, "ibug", ctx.tmp / "nowhere", [str(ctx.tmp / "nowhere")])


def p_missing_cofw_file(ctx):
    root = _cofw(ctx)
    (root / "COFW_train_color.mat").unlink()
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_train_color.mat"), "missing"])


def p_missing_image(ctx):
    root = _w300(ctx)
    (root / "helen/trainset/image_0001.jpg").unlink()
    return _prep_case(ctx, "ibug", root, [str(root / "helen/trainset/image_0001.jpg"), "missing"])


def p_missing_pts(ctx):
    root = _generic(ctx)
    (root / "img/train/face_1.pts").unlink()
    return _prep_case(ctx, "generic", root, [str(root / "img/train/face_1.pts"), "missing"])


def p_missing_box_file(ctx):
    root = _w300(ctx)
    (root / "Bounding Boxes/bounding_boxes_lfpw_trainset.mat").unlink()
    return _prep_case(ctx, "ibug", root, ["bounding_boxes_lfpw_trainset.mat", "missing"])


def p_empty_cofw_mat(ctx):
    root = _cofw(ctx)
    (root / "COFW_train_color.mat").write_bytes(b"")
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_train_color.mat")])


def p_empty_box_mat(ctx):
    root = _w300(ctx)
    (root / "Bounding Boxes/bounding_boxes_afw.mat").write_bytes(b"")
    return _prep_case(ctx, "ibug", root, [str(root / "Bounding Boxes/bounding_boxes_afw.mat")])


def p_empty_pts(ctx):
    root = _w300(ctx)
    (root / "afw/image_0001.pts").write_bytes(b"")
    return _prep_case(ctx, "ibug", root, [str(root / "afw/image_0001.pts")])


def p_empty_image(ctx):
    root = _mtfl(ctx)
    (root / "lfw_5590/Person_0001.jpg").write_bytes(b"")
    return _prep_case(ctx, "mtfl", root, [str(root / "lfw_5590/Person_0001.jpg")])


def p_empty_mtfl_list(ctx):
    root = _mtfl(ctx)
    (root / "training.txt").write_text("")
    return _prep_case(ctx, "mtfl", root, [str(root / "training.txt")])


def p_empty_generic_test_split(ctx):
    root = _generic(ctx)
    (root / "test_images.txt").write_text("\n")
    (root / "test_boxes.txt").write_text("")
    return _prep_case(ctx, "generic", root, [str(root / "test_images.txt")])


def p_empty_300w_test_split(ctx):
    root = _w300(ctx)
    from test_data_fixtures import write_boxes_mat
    write_boxes_mat(str(root / "Bounding Boxes/bounding_boxes_ibug.mat"), [])
    return _prep_case(ctx, "ibug", root, ["bounding_boxes_ibug.mat"])


def p_cofw_missing_dataset(ctx):
    root = _cofw(ctx)
    edit_h5(root / "COFW_train_color.mat", drop="phisTr")
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_train_color.mat"), "phisTr"])


def p_cofw_wrong_shape(ctx):
    root = _cofw(ctx)
    edit_h5(root / "COFW_train_color.mat", reshape="phisTr")
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_train_color.mat"), "phisTr"])


def p_cofw_boxes_wrong_shape(ctx):
    root = _cofw(ctx)
    edit_h5(root / "COFW_test_color.mat", reshape="bboxesT")
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_test_color.mat"), "bboxesT"])


def p_cofw_nan_landmark(ctx):
    root = _cofw(ctx)
    edit_h5(root / "COFW_train_color.mat", nan="phisTr")
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_train_color.mat"), "not a finite number"])


def p_pts_nan(ctx):
    root = _w300(ctx)
    path = root / "lfpw/trainset/image_0000.pts"
    pts = np.full((68, 2), 30.0)
    pts[4] = (np.nan, 12.0)
    write_pts_crlf(str(path), pts)
    return _prep_case(ctx, "ibug", root, [str(path), "landmark 5"])


def p_mtfl_inf(ctx):
    root = _mtfl(ctx)
    lines = (root / "testing.txt").read_text().splitlines()
    fields = lines[1].split()
    fields[3] = "inf"
    lines[1] = " " + " ".join(fields)
    (root / "testing.txt").write_text("\n".join(lines) + "\n")
    return _prep_case(ctx, "mtfl", root, [f"{root / 'testing.txt'}:2", "not a finite number"])


def p_pts_wrong_count(ctx):
    root = _generic(ctx)
    path = root / "img/test/face_2.pts"
    write_pts_crlf(str(path), np.full((67, 2), 20.0))
    return _prep_case(ctx, "generic", root, [str(path), "67 points"])


def p_pts_header_disagrees(ctx):
    root = _w300(ctx)
    path = root / "ibug/image_0000.pts"
    write_pts_crlf(str(path), np.full((68, 2), 20.0), n_declared=70)
    return _prep_case(ctx, "ibug", root, [str(path), "n_points says 70"])


def p_pts_bad_line(ctx):
    root = _w300(ctx)
    path = root / "afw/image_0000.pts"
    text = path.read_bytes().decode().replace("\r\n", "\n").splitlines()
    text[6] = "12.5 oops"
    path.write_text("\n".join(text) + "\n")
    return _prep_case(ctx, "ibug", root, [f"{path}:7", "oops"])


def p_degenerate_box_300w(ctx):
    root = _w300(ctx)
    from test_data_fixtures import write_boxes_mat
    write_boxes_mat(str(root / "Bounding Boxes/bounding_boxes_helen_testset.mat"),
                    [("image_0000.jpg", [1, 1, 50, 50], [40, 30, 40, 60]), ("image_0001.jpg", [1, 1, 50, 50],
                                                                            [10, 10, 60, 60])])
    return _prep_case(ctx, "ibug", root, ["bounding_boxes_helen_testset.mat", "entry 1", "degenerate"],
                      "--test-split", "full")


def p_degenerate_box_generic(ctx):
    root = _generic(ctx)
    lines = (root / "train_boxes.txt").read_text().splitlines()
    lines[1] = "40 40 10 60"  # left = right
    (root / "train_boxes.txt").write_text("\n".join(lines) + "\n")
    return _prep_case(ctx, "generic", root, [f"{root / 'train_boxes.txt'}:2", "degenerate"])


def p_cofw_degenerate_box(ctx):
    root = _cofw(ctx)
    with h5py.File(root / "COFW_train_color.mat", "r+") as f:
        b = f["bboxesTr"][...]
        b[3, 2] = 0  # height 0
        f["bboxesTr"][...] = b
    return _prep_case(ctx, "cofw", root, [str(root / "COFW_train_color.mat"), "face 3", "degenerate"])


def p_box_outside_image(ctx):
    root = _w300(ctx)
    from test_data_fixtures import write_boxes_mat
    write_boxes_mat(str(root / "Bounding Boxes/bounding_boxes_ibug.mat"),
                    [("image_0000.jpg", [1, 1, 50, 50], [500, 400, 560, 470]),
                     ("image_0001.jpg", [1, 1, 50, 50], [10, 10, 60, 60])])
    return _prep_case(ctx, "ibug", root, ["ibug/image_0000", "does not overlap"])


def p_landmark_outside_image(ctx):
    root = _generic(ctx)
    path = root / "img/train/face_0.pts"
    pts = np.full((68, 2), 40.0)
    pts[10] = (900.0, 40.0)
    write_pts_crlf(str(path), pts)
    return _prep_case(ctx, "generic", root, ["img/train/face_0", "landmark 11", "outside"])


def p_unreadable_image(ctx):
    root = _generic(ctx)
    (root / "img/test/face_1.png").write_bytes(b"\x89PNG broken")
    return _prep_case(ctx, "generic", root, [str(root / "img/test/face_1.png"), "unreadable"])


def p_unwritable_out(ctx):
    out = ctx.blocked("run", "data")
    return Case([PREP, "--dataset", "synth", "--n-train", "6", "--n-test", "2", "--copies", "2", "--out", out,
                 "--quiet"], [str(ctx.tmp / "plain_file")], [out])


# ---- tools/make_nets.py ------------------------------------------------------------------------

def m_unwritable_run(ctx):
    run = ctx.blocked("run")
    return Case(["tools/make_nets.py", "--run", run, "--layout", "5"], [str(ctx.tmp / "plain_file")],
                [run / "nets"])


# ---- tools/run_stage.py ------------------------------------------------------------------------

STAGE = "tools/run_stage.py"


def _stage2(ctx, init: Path, weights: Path | None = None, run: Path | None = None) -> Case:
    run = run or ctx.run
    argv = [STAGE, "--run", run, "--stage", "stage2", "--init", init]
    if weights is not None:
        argv += ["--loss-weights", weights]
    return Case(argv, [str(init if weights is None else weights)],
                [run / "models/stage2.caffemodel", run / "models/stage2.raw.caffemodel"])


def r_missing_init(ctx):
    return _stage2(ctx, ctx.tmp / "nope.caffemodel")


def r_empty_init(ctx):
    return _stage2(ctx, ctx.empty("empty.caffemodel"))


def r_truncated_init(ctx):
    return _stage2(ctx, ctx.truncated(ctx.run / "models/bm.caffemodel", "cut.caffemodel"))


def r_init_not_netparameter(ctx):
    return _stage2(ctx, ctx.not_netparameter("text.caffemodel"))


def r_init_other_layout(ctx):
    case = _stage2(ctx, ctx.other_layout_model)
    case.names.append("conv43")  # the first layer that does not fit
    return case


def r_weights_missing(ctx):
    return _stage2(ctx, ctx.run / "models/bm.caffemodel", ctx.tmp / "nope.json")


def r_weights_empty(ctx):
    return _stage2(ctx, ctx.run / "models/bm.caffemodel", ctx.empty("w.json"))


def r_weights_other_net(ctx):
    case = _stage2(ctx, ctx.run / "models/bm.caffemodel", ctx.other_layout_weights())
    case.names.append("layout 68")
    return case


def _stage1_data(ctx, names: list[str]) -> Case:
    run = ctx.run
    return Case([STAGE, "--run", run, "--stage", "stage1", "--out", run / "models/bm_again.caffemodel"], names,
                [run / "models/bm_again.caffemodel", run / "models/bm_again.raw.caffemodel"])


def r_train_h5_missing_dataset(ctx):
    run = no_data_manifest(ctx.run)
    edit_h5(run / "data/train_000.h5", drop="landmarks")
    return _stage1_data(ctx, [str(run / "data/train_000.h5"), "landmarks"])


def r_train_h5_wrong_shape(ctx):
    run = no_data_manifest(ctx.run)
    edit_h5(run / "data/train_000.h5", reshape="landmarks")
    return _stage1_data(ctx, [str(run / "data/train_000.h5"), "landmarks"])


def r_train_h5_nan(ctx):
    run = no_data_manifest(ctx.run)
    edit_h5(run / "data/train_000.h5", nan="landmarks")
    return _stage1_data(ctx, [str(run / "data/train_000.h5"), "landmarks", "finite"])


def r_train_h5_missing(ctx):
    run = no_data_manifest(ctx.run)
    (run / "data/train_000.h5").unlink()
    return _stage1_data(ctx, [str(run / "data/train_000.h5")])


def r_train_h5_empty_file(ctx):
    run = no_data_manifest(ctx.run)
    (run / "data/train_000.h5").write_bytes(b"")
    return _stage1_data(ctx, [str(run / "data/train_000.h5")])


def r_empty_split(ctx):
    run = no_data_manifest(ctx.run)
    (run / "data/train.txt").write_text("")
    return _stage1_data(ctx, [str(run / "data/train.txt"), "empty"])


def r_changed_data(ctx):  # with the data manifest: the checksum names the file
    flip = ctx.run / "data/train_000.h5"
    data = bytearray(flip.read_bytes())
    data[len(data) // 2] ^= 1
    flip.write_bytes(bytes(data))
    return _stage1_data(ctx, [str(flip), "differs"])


def r_unwritable_out(ctx):
    out = ctx.blocked("models", "bm.caffemodel")
    run = ctx.run
    return Case([STAGE, "--run", run, "--stage", "stage1", "--out", out], [str(ctx.tmp / "plain_file")], [out])


# ---- tools/compute_weights.py -----------------------------------------------------------------

CW = "tools/compute_weights.py"


def _cw(ctx, model: Path, names: list[str] | None = None, out: Path | None = None) -> Case:
    out = out or ctx.tmp / "w.json"
    return Case([CW, "--run", ctx.run, "--model", model, "--eq", "5", "--out", out],
                names if names is not None else [str(model)], [out])


def c_missing_model(ctx):
    return _cw(ctx, ctx.tmp / "nope.caffemodel")


def c_empty_model(ctx):
    return _cw(ctx, ctx.empty("e.caffemodel"))


def c_truncated_model(ctx):
    return _cw(ctx, ctx.truncated(ctx.run / "models/bm.caffemodel", "cut.caffemodel"))


def c_model_not_netparameter(ctx):
    return _cw(ctx, ctx.not_netparameter("text.caffemodel"))


def c_model_other_layout(ctx):
    return _cw(ctx, ctx.other_layout_model, [str(ctx.other_layout_model), "conv43"])


def c_val_h5_missing_dataset(ctx):
    edit_h5(ctx.run / "data/val_000.h5", drop="landmarks_image")
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/val_000.h5"), "landmarks_image"])


def c_val_h5_wrong_shape(ctx):
    edit_h5(ctx.run / "data/val_000.h5", reshape="landmarks_image")
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/val_000.h5"), "landmarks_image"])


def c_val_h5_nan(ctx):
    edit_h5(ctx.run / "data/val_000.h5", nan="landmarks_image")
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/val_000.h5"), "landmarks_image"])


def c_val_h5_inf_iod(ctx):
    edit_h5(ctx.run / "data/val_000.h5", inf="iod_image")
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/val_000.h5"), "iod_image"])


def c_val_h5_missing(ctx):
    (ctx.run / "data/val_000.h5").unlink()
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/val_000.h5")])


def c_empty_split(ctx):
    (ctx.run / "data/val.txt").write_text("")
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/val.txt"), "empty"])


def c_unwritable_out(ctx):
    out = ctx.blocked("weights", "w.json")
    return _cw(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.tmp / "plain_file")], out)


# ---- tools/set_loss_weights.py ----------------------------------------------------------------

SLW = "tools/set_loss_weights.py"


def _slw(ctx, net: Path, weights: Path, names: list[str], out: Path | None = None) -> Case:
    out = out or ctx.tmp / "net_out.prototxt"
    return Case([SLW, net, weights, "-o", out], names, [out])


def s_missing_net(ctx):
    return _slw(ctx, ctx.tmp / "nope.prototxt", ctx.run / "weights/bm_eq5.json", [str(ctx.tmp / "nope.prototxt")])


def s_empty_net(ctx):
    net = ctx.empty("empty.prototxt")
    return _slw(ctx, net, ctx.run / "weights/bm_eq5.json", [str(net)])


def s_net_without_loss(ctx):
    net = ctx.run / "nets/deploy.prototxt"
    return _slw(ctx, net, ctx.run / "weights/bm_eq5.json", [str(net), "no loss layers"])


def s_missing_weights(ctx):
    return _slw(ctx, ctx.run / "nets/stage2_train.prototxt", ctx.tmp / "nope.json", [str(ctx.tmp / "nope.json")])


def s_empty_weights(ctx):
    w = ctx.empty("w.json")
    return _slw(ctx, ctx.run / "nets/stage2_train.prototxt", w, [str(w)])


def s_weights_other_net(ctx):
    w = ctx.other_layout_weights()
    return _slw(ctx, ctx.run / "nets/stage2_train.prototxt", w, [str(w), "layout 68"])


def s_unwritable_out(ctx):
    out = ctx.blocked("nets", "n.prototxt")
    return _slw(ctx, ctx.run / "nets/stage2_train.prototxt", ctx.run / "weights/bm_eq5.json",
                [str(ctx.tmp / "plain_file")], out)


# ---- tools/assemble.py ----------------------------------------------------------------------

ASM = "tools/assemble.py"


def _asm(ctx, heads: Path, names: list[str] | None = None, out: Path | None = None) -> Case:
    out = out or ctx.tmp / "am.caffemodel"
    return Case([ASM, "--run", ctx.run, "--heads", heads, "--out", out, "--check-samples", "4"],
                names if names is not None else [str(heads)], [out, out.with_name("am_deploy.prototxt")])


def a_missing_heads(ctx):
    return _asm(ctx, ctx.tmp / "nope.caffemodel")


def a_empty_heads(ctx):
    return _asm(ctx, ctx.empty("h.caffemodel"))


def a_truncated_heads(ctx):
    return _asm(ctx, ctx.truncated(ctx.run / "models/heads.caffemodel", "cut.caffemodel"))


def a_heads_not_netparameter(ctx):
    return _asm(ctx, ctx.not_netparameter("text.caffemodel"))


def a_bm_instead_of_heads(ctx):
    return _asm(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "models/bm.caffemodel"), "shape_pred_"])


def a_heads_other_layout(ctx):
    return _asm(ctx, ctx.other_layout_model, [str(ctx.other_layout_model)])


def a_listing_empty(ctx):
    return _asm(ctx, ctx.empty("heads_separate.json"))


def a_listing_other_net(ctx):
    listing = ctx.tmp / "heads_separate.json"
    listing.write_text(json.dumps({"layout": "68", "heads": {"left_eye": "models/heads.caffemodel"}}))
    return _asm(ctx, listing, [str(listing), "68"])


def a_listing_missing_head(ctx):
    listing = ctx.tmp / "heads_separate.json"
    from mcl.method.layouts import get_layout
    listing.write_text(json.dumps({"layout": "5", "heads": {c: f"models/head_{c}.caffemodel"
                                                            for c in get_layout(5).cluster_names}}))
    return _asm(ctx, listing, [str(ctx.run / "models" / f"head_{get_layout(5).cluster_names[0]}.caffemodel")])


def a_empty_split(ctx):  # the self-check's validation faces
    (ctx.run / "data/val.txt").write_text("")
    return _asm(ctx, ctx.run / "models/heads.caffemodel", [str(ctx.run / "data/val.txt"), "empty"])


def a_unwritable_out(ctx):
    out = ctx.blocked("models", "am.caffemodel")
    return _asm(ctx, ctx.run / "models/heads.caffemodel", [str(ctx.tmp / "plain_file")], out)


# ---- tools/evaluate.py ----------------------------------------------------------------------

EV = "tools/evaluate.py"


def _ev(ctx, model: Path, names: list[str] | None = None, out: Path | None = None) -> Case:
    out = out or ctx.tmp / "eval" / "test"
    return Case([EV, "--run", ctx.run, "--model", f"BM={model}", "--speed-repeats", "0", "--overlays", "0",
                 "--out", out], names if names is not None else [str(model)],
                [out.with_suffix(".json"), out.with_suffix(".md"), out.with_name(out.name + "_ced.png")])


def e_missing_model(ctx):
    return _ev(ctx, ctx.tmp / "nope.caffemodel")


def e_empty_model(ctx):
    return _ev(ctx, ctx.empty("e.caffemodel"))


def e_truncated_model(ctx):
    return _ev(ctx, ctx.truncated(ctx.run / "models/bm.caffemodel", "cut.caffemodel"))


def e_model_not_netparameter(ctx):
    return _ev(ctx, ctx.not_netparameter("text.caffemodel"))


def e_model_other_layout(ctx):
    return _ev(ctx, ctx.other_layout_model, [str(ctx.other_layout_model), "conv43"])


def e_test_h5_missing_dataset(ctx):
    edit_h5(ctx.run / "data/test_000.h5", drop="crop_to_image")
    return _ev(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/test_000.h5"), "crop_to_image"])


def e_test_h5_wrong_shape(ctx):
    edit_h5(ctx.run / "data/test_000.h5", reshape="data")
    return _ev(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/test_000.h5"), "data"])


def e_test_h5_nan(ctx):
    edit_h5(ctx.run / "data/test_000.h5", nan="landmarks_image")
    return _ev(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/test_000.h5"), "landmarks_image"])


def e_empty_split(ctx):
    (ctx.run / "data/test.txt").write_text("")
    return _ev(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.run / "data/test.txt"), "empty"])


def e_predictions_wrong_count(ctx):
    pred = ctx.tmp / "pred.txt"
    pred.write_text("\n".join(" ".join(["10"] * 9) for _ in range(6)) + "\n")
    out = ctx.tmp / "eval" / "test"
    return Case([EV, "--run", ctx.run, "--predictions", f"P={pred}", "--speed-repeats", "0", "--overlays", "0",
                 "--out", out], [str(pred), "line 1"], [out.with_suffix(".json")])


def e_unwritable_out(ctx):
    return _ev(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.tmp / "plain_file")], ctx.blocked("eval", "test"))


# ---- tools/port.py --------------------------------------------------------------------------

PORT = "tools/port.py"


def _port(ctx, model: Path, names: list[str] | None = None, out: Path | None = None,
          prototxt: Path | None = None) -> Case:
    out = out or ctx.tmp / "port"
    return Case([PORT, "export", "--prototxt", prototxt or ctx.run / "nets/deploy.prototxt", "--caffemodel", model,
                 "--out", out], names if names is not None else [str(model)], [out / "bm.onnx", out / "bm.npz"])


def x_missing_model(ctx):
    return _port(ctx, ctx.tmp / "nope.caffemodel")


def x_empty_model(ctx):
    return _port(ctx, ctx.empty("bm.caffemodel"))


def x_truncated_model(ctx):
    return _port(ctx, ctx.truncated(ctx.run / "models/bm.caffemodel", "bm.caffemodel"))


def x_model_not_netparameter(ctx):
    return _port(ctx, ctx.not_netparameter("bm.caffemodel"))


def x_model_other_layout(ctx):
    return _port(ctx, ctx.other_layout_model, [str(ctx.other_layout_model), "conv43"])


def x_missing_prototxt(ctx):
    return _port(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.tmp / "nope.prototxt")],
                 prototxt=ctx.tmp / "nope.prototxt")


def x_unwritable_out(ctx):
    return _port(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.tmp / "plain_file")], ctx.blocked("port"))


# ---- tools/bn_stats.py, tools/audit.py, tools/predict.py ---------------------------------------

def _bn(ctx, model: Path, names: list[str] | None = None, out: Path | None = None) -> Case:
    out = out or ctx.tmp / "bm_stats.caffemodel"
    return Case(["tools/bn_stats.py", "--run", ctx.run, "--stage", "stage1", "--model", model, "--out", out,
                 "--batches", "2"], names if names is not None else [str(model)], [out])


def b_missing_model(ctx):
    return _bn(ctx, ctx.tmp / "nope.caffemodel")


def b_empty_model(ctx):
    return _bn(ctx, ctx.empty("e.caffemodel"))


def b_truncated_model(ctx):
    return _bn(ctx, ctx.truncated(ctx.run / "models/bm.caffemodel", "cut.caffemodel"))


def b_model_other_layout(ctx):
    return _bn(ctx, ctx.other_layout_model, [str(ctx.other_layout_model), "conv43"])


def b_unwritable_out(ctx):
    return _bn(ctx, ctx.run / "models/bm.caffemodel", [str(ctx.tmp / "plain_file")],
               ctx.blocked("models", "x.caffemodel"))


def _perturb(ctx, weights: Path, names: list[str] | None = None, out: Path | None = None) -> Case:
    out = out or ctx.tmp / "w_perturbed.json"
    return Case(["tools/audit.py", "perturb", "--run", ctx.run, "--weights", weights, "--delta", "0.2", "--seed", "0",
                 "--out", out], names if names is not None else [str(weights)], [out])


def u_missing_weights(ctx):
    return _perturb(ctx, ctx.tmp / "nope.json")


def u_empty_weights(ctx):
    return _perturb(ctx, ctx.empty("w.json"))


def u_weights_other_net(ctx):
    return _perturb(ctx, ctx.other_layout_weights(), [str(ctx.tmp / "w68.json"), "68"])


def u_unwritable_out(ctx):
    return _perturb(ctx, ctx.run / "weights/bm_eq5.json", [str(ctx.tmp / "plain_file")],
                    ctx.blocked("weights", "w.json"))


def _predict(ctx, model: Path) -> Case:
    out = ctx.tmp / "pred"
    picture = next((ctx.run / "data/synth_raw/ibug").glob("*.png"))
    return Case(["tools/predict.py", picture, "--box", "10", "10", "60", "60", "--model", model, "--out", out],
                [str(model)], [out])


def d_missing_model(ctx):
    return _predict(ctx, ctx.tmp / "nope.onnx")


def d_empty_model(ctx):
    return _predict(ctx, ctx.empty("am.onnx"))


def d_model_not_onnx(ctx):
    return _predict(ctx, ctx.run / "models/bm.caffemodel")


# ---- tools/verify.py ------------------------------------------------------------------------

def v_empty_manifest(ctx):
    (ctx.run / "manifest.json").write_text("")
    return Case(["tools/verify.py", "--run", ctx.run], [str(ctx.run / "manifest.json")])


def v_empty_data_manifest(ctx):
    (ctx.run / "data/manifest.json").write_text("")
    return Case(["tools/verify.py", "--run", ctx.run], [str(ctx.run / "data/manifest.json")])


CASES = {
    # data_prep/prepare.py
    "prepare-root-missing": p_missing_root,
    "prepare-cofw_mat-missing": p_missing_cofw_file,
    "prepare-image-missing": p_missing_image,
    "prepare-pts-missing": p_missing_pts,
    "prepare-box_mat-missing": p_missing_box_file,
    "prepare-cofw_mat-empty": p_empty_cofw_mat,
    "prepare-box_mat-empty": p_empty_box_mat,
    "prepare-pts-empty": p_empty_pts,
    "prepare-image-empty": p_empty_image,
    "prepare-mtfl_list-empty_split": p_empty_mtfl_list,
    "prepare-generic_list-empty_split": p_empty_generic_test_split,
    "prepare-300w_boxes-empty_split": p_empty_300w_test_split,
    "prepare-cofw_mat-dataset_missing": p_cofw_missing_dataset,
    "prepare-cofw_mat-phis_wrong_shape": p_cofw_wrong_shape,
    "prepare-cofw_mat-boxes_wrong_shape": p_cofw_boxes_wrong_shape,
    "prepare-cofw_mat-nan_landmark": p_cofw_nan_landmark,
    "prepare-pts-nan_landmark": p_pts_nan,
    "prepare-mtfl_list-inf_landmark": p_mtfl_inf,
    "prepare-pts-wrong_count": p_pts_wrong_count,
    "prepare-pts-header_disagrees": p_pts_header_disagrees,
    "prepare-pts-bad_line": p_pts_bad_line,
    "prepare-box_mat-degenerate_box": p_degenerate_box_300w,
    "prepare-generic_boxes-degenerate_box": p_degenerate_box_generic,
    "prepare-cofw_mat-degenerate_box": p_cofw_degenerate_box,
    "prepare-box_mat-box_outside_image": p_box_outside_image,
    "prepare-pts-landmark_outside_image": p_landmark_outside_image,
    "prepare-image-unreadable": p_unreadable_image,
    "prepare-out-unwritable": p_unwritable_out,
    # tools/make_nets.py
    "make_nets-run-unwritable": m_unwritable_run,
    # tools/run_stage.py
    "run_stage-init-missing": r_missing_init,
    "run_stage-init-empty": r_empty_init,
    "run_stage-init-truncated": r_truncated_init,
    "run_stage-init-not_netparameter": r_init_not_netparameter,
    "run_stage-init-other_layout": r_init_other_layout,
    "run_stage-weights-missing": r_weights_missing,
    "run_stage-weights-empty": r_weights_empty,
    "run_stage-weights-other_net": r_weights_other_net,
    "run_stage-train_h5-missing": r_train_h5_missing,
    "run_stage-train_h5-empty": r_train_h5_empty_file,
    "run_stage-train_h5-dataset_missing": r_train_h5_missing_dataset,
    "run_stage-train_h5-wrong_shape": r_train_h5_wrong_shape,
    "run_stage-train_h5-nan_landmark": r_train_h5_nan,
    "run_stage-train_list-empty_split": r_empty_split,
    "run_stage-train_h5-changed": r_changed_data,
    "run_stage-out-unwritable": r_unwritable_out,
    # tools/compute_weights.py
    "compute_weights-model-missing": c_missing_model,
    "compute_weights-model-empty": c_empty_model,
    "compute_weights-model-truncated": c_truncated_model,
    "compute_weights-model-not_netparameter": c_model_not_netparameter,
    "compute_weights-model-other_layout": c_model_other_layout,
    "compute_weights-val_h5-missing": c_val_h5_missing,
    "compute_weights-val_h5-dataset_missing": c_val_h5_missing_dataset,
    "compute_weights-val_h5-wrong_shape": c_val_h5_wrong_shape,
    "compute_weights-val_h5-nan_landmark": c_val_h5_nan,
    "compute_weights-val_h5-inf_iod": c_val_h5_inf_iod,
    "compute_weights-val_list-empty_split": c_empty_split,
    "compute_weights-out-unwritable": c_unwritable_out,
    # tools/set_loss_weights.py
    "set_loss_weights-net-missing": s_missing_net,
    "set_loss_weights-net-empty": s_empty_net,
    "set_loss_weights-net-no_loss_layers": s_net_without_loss,
    "set_loss_weights-weights-missing": s_missing_weights,
    "set_loss_weights-weights-empty": s_empty_weights,
    "set_loss_weights-weights-other_net": s_weights_other_net,
    "set_loss_weights-out-unwritable": s_unwritable_out,
    # tools/assemble.py
    "assemble-heads-missing": a_missing_heads,
    "assemble-heads-empty": a_empty_heads,
    "assemble-heads-truncated": a_truncated_heads,
    "assemble-heads-not_netparameter": a_heads_not_netparameter,
    "assemble-heads-no_heads": a_bm_instead_of_heads,
    "assemble-heads-other_layout": a_heads_other_layout,
    "assemble-listing-empty": a_listing_empty,
    "assemble-listing-other_net": a_listing_other_net,
    "assemble-listing-head_missing": a_listing_missing_head,
    "assemble-val_list-empty_split": a_empty_split,
    "assemble-out-unwritable": a_unwritable_out,
    # tools/evaluate.py
    "evaluate-model-missing": e_missing_model,
    "evaluate-model-empty": e_empty_model,
    "evaluate-model-truncated": e_truncated_model,
    "evaluate-model-not_netparameter": e_model_not_netparameter,
    "evaluate-model-other_layout": e_model_other_layout,
    "evaluate-test_h5-dataset_missing": e_test_h5_missing_dataset,
    "evaluate-test_h5-wrong_shape": e_test_h5_wrong_shape,
    "evaluate-test_h5-nan_landmark": e_test_h5_nan,
    "evaluate-test_list-empty_split": e_empty_split,
    "evaluate-predictions-wrong_count": e_predictions_wrong_count,
    "evaluate-out-unwritable": e_unwritable_out,
    # tools/port.py
    "port-model-missing": x_missing_model,
    "port-model-empty": x_empty_model,
    "port-model-truncated": x_truncated_model,
    "port-model-not_netparameter": x_model_not_netparameter,
    "port-model-other_layout": x_model_other_layout,
    "port-prototxt-missing": x_missing_prototxt,
    "port-out-unwritable": x_unwritable_out,
    # tools/bn_stats.py
    "bn_stats-model-missing": b_missing_model,
    "bn_stats-model-empty": b_empty_model,
    "bn_stats-model-truncated": b_truncated_model,
    "bn_stats-model-other_layout": b_model_other_layout,
    "bn_stats-out-unwritable": b_unwritable_out,
    # tools/audit.py perturb
    "audit_perturb-weights-missing": u_missing_weights,
    "audit_perturb-weights-empty": u_empty_weights,
    "audit_perturb-weights-other_net": u_weights_other_net,
    "audit_perturb-out-unwritable": u_unwritable_out,
    # tools/predict.py
    "predict-model-missing": d_missing_model,
    "predict-model-empty": d_empty_model,
    "predict-model-not_onnx": d_model_not_onnx,
    # tools/verify.py
    "verify-manifest-empty": v_empty_manifest,
    "verify-data_manifest-empty": v_empty_data_manifest,
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input(case_id, tmp_path, tmp_path_factory):
    case = CASES[case_id](Ctx(tmp_path, tmp_path_factory))
    script, *args = case.argv
    proc = subprocess.run([PY, str(ROOT / script), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GLOG_minloglevel="2"))
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}\n{proc.stdout[-1000:]}"
    assert "Traceback" not in err, err[-3000:]
    missing = [name for name in case.names if name not in err]
    assert not missing, f"stderr does not name {missing}:\n{err[-3000:]}"
    left = [str(p) for p in case.finals if p.exists()]
    assert not left, f"written under a final name: {left}"
