"""The bad-input corpus: every entry point against every bad input that applies to it.

Each case runs the tool as a user would and expects exit status 2, a message on stderr
that names the offending file (and the line or layer where there is one), no traceback,
and nothing under the final name of any output. The cases are one table, CASES, one row
a case, parametrized by id (`<tool>-<input>-<fault>`), so `pytest --collect-only -q
tests/test_corpus.py` counts them.

Tools: data_prep/prepare.py, tools/make_nets.py, run_stage.py, compute_weights.py,
set_loss_weights.py, assemble.py, evaluate.py, port.py, bn_stats.py, audit.py (perturb),
predict.py, verify.py, data_prep/extra_test.py, paper_report.py. Faults: a missing
file, an empty file, a truncated caffemodel, a file that is no NetParameter, a model of
another layout, a weights file for another net, HDF5 with a dataset missing or of the
wrong shape, NaN or infinite landmarks, a .pts with the wrong count, a degenerate or
out-of-image box, an empty split, an output folder that cannot be made (its parent is a
regular file: tests may run as root, where permissions stop no write).

A row's strings name paths through placeholders, each made when a case first names it:
{tmp} the case's own folder; {run} a copy there of the tiny run (conftest.tiny_run);
{blocked} a regular file, so that no folder can be made below it; {bm68} a 68-point model;
{w68} Eq. 5 weights of the 68-point layout; {picture} a picture of the tiny run's raw data.
A row's setup steps build the bad input before the tool runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import PY, ROOT, flip_byte, tool
from fixtures_data import write_300w, write_boxes_mat, write_cofw, write_generic, write_mtfl, write_pts_crlf

from mcl.method.layouts import get_layout


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # script path relative to the repository, then its arguments
    finals: tuple[str, ...]  # outputs that must not exist afterwards
    names: tuple[str, ...] = ()  # what stderr must name: the file, and its line or layer where there is one
    setup: tuple = ()  # steps that build the bad input, in order
    status: int = 2  # the exit status


def bad(case_id: str, cmd: Case, names: list[str], *setup, status: int = 2):
    """A row of the table: the command (from the helpers below), what stderr must name, the setup."""
    return pytest.param(replace(cmd, names=tuple(names), setup=setup, status=status), id=case_id)


class Inputs:
    """The placeholders of a case's strings (see the module's docstring), each made when first named."""

    def __init__(self, tmp: Path, request):
        self.tmp, self.request = tmp, request
        self.made = {"tmp": tmp}

    def __getitem__(self, key: str):  # for str.format_map
        if key not in self.made:
            self.made[key] = getattr(self, f"_make_{key}")()
        return self.made[key]

    def __call__(self, template: str) -> str:
        return template.format_map(self)

    def path(self, template: str) -> Path:
        return Path(self(template))

    def _make_run(self) -> Path:
        _, built = self.request.getfixturevalue("tiny_run")
        copy = self.tmp / "run"
        shutil.copytree(built, copy)
        return copy

    def _make_blocked(self) -> Path:
        path = self.tmp / "plain_file"
        path.write_text("a file, not a folder\n")
        return path

    def _make_bm68(self) -> Path:
        return self.request.getfixturevalue("bm68")

    def _make_w68(self) -> Path:
        from mcl.method import loss_weights
        path = self.tmp / "w68.json"
        path.write_text(json.dumps(loss_weights.document(get_layout(68), "eq5", weights=[1.0] * 68)))
        return path

    def _make_picture(self) -> Path:
        return next((self["run"] / "data/synth_raw/ibug").glob("*.png"))


@pytest.fixture(scope="session")
def bm68(tmp_path_factory) -> Path:
    """A 68-point BM for the 5-point tiny run: random weights, BatchNorm statistics as after
    training (scale factor 1)."""
    path = tmp_path_factory.mktemp("other_layout") / "bm68.caffemodel"
    code = ("import caffe, sys; caffe.set_mode_cpu(); net = caffe.Net(sys.argv[1], caffe.TEST)\n"
            "for name, layer in net.layer_dict.items():\n"
            "    if layer.type == 'BatchNorm': net.params[name][2].data[...] = 1\n"
            "net.save(sys.argv[2])")
    subprocess.run([PY, "-c", code, str(ROOT / "prototxt/68/deploy.prototxt"), str(path)], check=True,
                   capture_output=True, env=dict(os.environ, GLOG_minloglevel="2"))
    return path


# ---- the paths rows name often -----------------------------------------------------------------

BM = "{run}/models/bm.caffemodel"
HEADS = "{run}/models/heads.caffemodel"
EQ5 = "{run}/loss_weights/bm_eq5.json"
DEPLOY = "{run}/nets/deploy.prototxt"
STAGE2_NET = "{run}/nets/stage2_train.prototxt"
W300, COFW, MTFL, GENERIC = "{tmp}/300w", "{tmp}/cofw", "{tmp}/mtfl", "{tmp}/generic"
BOXES = W300 + "/Bounding Boxes"
COFW_TRAIN, COFW_TEST = COFW + "/COFW_train_color.mat", COFW + "/COFW_test_color.mat"
CLUSTERS5 = get_layout(5).cluster_names


# ---- setup steps: each takes the case's Inputs ---------------------------------------------------

DATASETS = {"300w": lambda root: write_300w(root, per_subset=2), "cofw": write_cofw,
            "mtfl": lambda root: write_mtfl(root, n=3), "generic": lambda root: write_generic(root, n=3)}


def dataset(kind: str):
    """A small data root of `kind` (fixtures_data) at {tmp}/<kind>."""
    return lambda x: DATASETS[kind](str(x.tmp / kind))


def unlink(path: str):
    return lambda x: x.path(path).unlink()


def remove_tree(path: str):
    return lambda x: shutil.rmtree(x.path(path))


def write(path: str, content: str | bytes):
    """`content` as it is (no placeholders) under `path`."""
    def step(x):
        if isinstance(content, bytes):
            x.path(path).write_bytes(content)
        else:
            x.path(path).write_text(content)
    return step


def empty(path: str):
    return write(path, b"")


NO_DATA_MANIFEST = unlink("{run}/data/manifest.json")  # data from elsewhere: checked as such, not by checksum


def truncated(src: str, dst: str):
    """The first half of `src` under `dst`."""
    def step(x):
        data = x.path(src).read_bytes()
        x.path(dst).write_bytes(data[: len(data) // 2])
    return step


def copy(src: str, dst: str):
    return lambda x: x.path(dst).write_bytes(x.path(src).read_bytes())


def not_netparameter(dst: str):
    """A text prototxt saved under a caffemodel's name (a common mix-up)."""
    return copy(DEPLOY, dst)


def flip(path: str):
    return lambda x: flip_byte(x.path(path))


def h5(path: str, drop: str | None = None, reshape: str | None = None, nan: str | None = None,
       inf: str | None = None):
    """An HDF5 file edited: a dataset dropped, one reshaped to one column less, one value NaN or inf."""
    def step(x):
        with h5py.File(x.path(path), "r+") as f:
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
    return step


def pts(path: str, n: int, value: float, at: dict | None = None, n_declared: int | None = None):
    """An ibug .pts of `n` points at (value, value), those in `at` elsewhere; its header may claim another count."""
    def step(x):
        points = np.full((n, 2), value)
        for i, point in (at or {}).items():
            points[i] = point
        write_pts_crlf(x(path), points, n_declared=n_declared)
    return step


def boxes(path: str, entries: list):
    """A bounding_boxes_*.mat of (picture, detector box, ground-truth box) entries."""
    return lambda x: write_boxes_mat(x(path), entries)


def line(path: str, index: int, text: str):
    """Line `index` (0-based) of a text file replaced; the file is rewritten with LF line ends."""
    def step(x):
        p = x.path(path)
        lines = p.read_text().splitlines()
        lines[index] = text
        p.write_text("\n".join(lines) + "\n")
    return step


def mtfl_inf_landmark(x):
    """The second face of MTFL's testing.txt with its fourth number infinite."""
    p = x.path(MTFL + "/testing.txt")
    lines = p.read_text().splitlines()
    fields = lines[1].split()
    fields[3] = "inf"
    lines[1] = " " + " ".join(fields)
    p.write_text("\n".join(lines) + "\n")


def cofw_face3_height0(x):
    with h5py.File(x.path(COFW_TRAIN), "r+") as f:
        b = f["bboxesTr"][...]
        b[3, 2] = 0  # height 0
        f["bboxesTr"][...] = b


# ---- the commands: argv and the outputs each must not leave ---------------------------------------

PREP = "data_prep/prepare.py"
STAGE = "tools/run_stage.py"
EV = "tools/evaluate.py"


def prep(dataset: str, root: str, *extra: str) -> Case:
    out = "{tmp}/out/data"
    return Case((PREP, "--dataset", dataset, "--data-root", root, "--out", out, "--quiet", "--copies", "2", *extra),
                (out,))


def stage2(init: str, weights: str | None = None) -> Case:
    more = () if weights is None else ("--loss-weights", weights)
    return Case((STAGE, "--run", "{run}", "--stage", "stage2", "--init", init, *more),
                ("{run}/models/stage2.caffemodel", "{run}/models/stage2.raw.caffemodel"))


def stage1(out: str = "{run}/models/bm_again") -> Case:
    """Stage 1 again, its product (and the raw model beside it) under `out` + .caffemodel."""
    return Case((STAGE, "--run", "{run}", "--stage", "stage1", "--out", out + ".caffemodel"),
                (out + ".caffemodel", out + ".raw.caffemodel"))


def cw(model: str, out: str = "{tmp}/w.json") -> Case:
    return Case(("tools/compute_weights.py", "--run", "{run}", "--model", model, "--eq", "5", "--out", out), (out,))


def slw(net: str, weights: str, out: str = "{tmp}/net_out.prototxt") -> Case:
    return Case(("tools/set_loss_weights.py", net, weights, "-o", out), (out,))


def asm(heads: str, out: str = "{tmp}/am.caffemodel") -> Case:
    return Case(("tools/assemble.py", "--run", "{run}", "--heads", heads, "--out", out, "--check-samples", "4"),
                (out, out.rsplit("/", 1)[0] + "/am_deploy.prototxt"))


def ev(model: str, out: str = "{tmp}/eval/test") -> Case:
    return Case((EV, "--run", "{run}", "--model", f"BM={model}", "--speed-repeats", "0", "--overlays", "0",
                 "--out", out), (out + ".json", out + ".md", out + "_ced.png"))


def port(model: str, out: str = "{tmp}/port", prototxt: str = DEPLOY) -> Case:
    return Case(("tools/port.py", "export", "--prototxt", prototxt, "--caffemodel", model, "--out", out),
                (out + "/bm.onnx", out + "/bm.npz"))


def bn(model: str, out: str = "{tmp}/bm_stats.caffemodel") -> Case:
    return Case(("tools/bn_stats.py", "--run", "{run}", "--stage", "stage1", "--model", model, "--out", out,
                 "--batches", "2"), (out,))


def perturb(weights: str, out: str = "{tmp}/w_perturbed.json") -> Case:
    return Case(("tools/audit.py", "perturb", "--run", "{run}", "--weights", weights, "--delta", "0.2", "--seed", "0",
                 "--out", out), (out,))


def predict(model: str) -> Case:
    return Case(("tools/predict.py", "{picture}", "--box", "10", "10", "60", "60", "--model", model,
                 "--out", "{tmp}/pred"), ("{tmp}/pred",))


VERIFY = Case(("tools/verify.py", "--run", "{run}"), ())


# ---- the table --------------------------------------------------------------------------------------

CASES = [
    # data_prep/prepare.py
    bad("prepare-root-missing", prep("ibug", "{tmp}/nowhere"), ["{tmp}/nowhere"]),
    bad("prepare-cofw_mat-missing", prep("cofw", COFW), [COFW_TRAIN, "missing"],
        dataset("cofw"), unlink(COFW_TRAIN)),
    bad("prepare-image-missing", prep("ibug", W300), [W300 + "/helen/trainset/image_0001.jpg", "missing"],
        dataset("300w"), unlink(W300 + "/helen/trainset/image_0001.jpg")),
    bad("prepare-pts-missing", prep("generic", GENERIC), [GENERIC + "/img/train/face_1.pts", "missing"],
        dataset("generic"), unlink(GENERIC + "/img/train/face_1.pts")),
    # (a missing box file is no fault: its subset takes the tight box of the points, tests/test_data_readers.py)
    bad("prepare-w300_split-absent", prep("ibug", W300), [W300 + "/ibug", "none of its subsets"],
        dataset("300w"), unlink(BOXES + "/bounding_boxes_ibug.mat"), remove_tree(W300 + "/ibug")),
    bad("prepare-cofw_mat-empty", prep("cofw", COFW), [COFW_TRAIN],
        dataset("cofw"), empty(COFW_TRAIN)),
    bad("prepare-box_mat-empty", prep("ibug", W300), [BOXES + "/bounding_boxes_afw.mat"],
        dataset("300w"), empty(BOXES + "/bounding_boxes_afw.mat")),
    bad("prepare-pts-empty", prep("ibug", W300), [W300 + "/afw/image_0001.pts"],
        dataset("300w"), empty(W300 + "/afw/image_0001.pts")),
    bad("prepare-image-empty", prep("mtfl", MTFL), [MTFL + "/lfw_5590/Person_0001.jpg"],
        dataset("mtfl"), empty(MTFL + "/lfw_5590/Person_0001.jpg")),
    bad("prepare-mtfl_list-empty_split", prep("mtfl", MTFL), [MTFL + "/training.txt"],
        dataset("mtfl"), write(MTFL + "/training.txt", "")),
    bad("prepare-generic_list-empty_split", prep("generic", GENERIC), [GENERIC + "/test_images.txt"],
        dataset("generic"), write(GENERIC + "/test_images.txt", "\n"), write(GENERIC + "/test_boxes.txt", "")),
    bad("prepare-300w_boxes-empty_split", prep("ibug", W300), ["bounding_boxes_ibug.mat"],
        dataset("300w"), boxes(BOXES + "/bounding_boxes_ibug.mat", [])),
    bad("prepare-cofw_mat-dataset_missing", prep("cofw", COFW), [COFW_TRAIN, "phisTr"],
        dataset("cofw"), h5(COFW_TRAIN, drop="phisTr")),
    bad("prepare-cofw_mat-phis_wrong_shape", prep("cofw", COFW), [COFW_TRAIN, "phisTr"],
        dataset("cofw"), h5(COFW_TRAIN, reshape="phisTr")),
    bad("prepare-cofw_mat-boxes_wrong_shape", prep("cofw", COFW), [COFW_TEST, "bboxesT"],
        dataset("cofw"), h5(COFW_TEST, reshape="bboxesT")),
    bad("prepare-cofw_mat-nan_landmark", prep("cofw", COFW), [COFW_TRAIN, "not a finite number"],
        dataset("cofw"), h5(COFW_TRAIN, nan="phisTr")),
    bad("prepare-pts-nan_landmark", prep("ibug", W300), [W300 + "/lfpw/trainset/image_0000.pts", "landmark 5"],
        dataset("300w"), pts(W300 + "/lfpw/trainset/image_0000.pts", 68, 30.0, at={4: (np.nan, 12.0)})),
    bad("prepare-mtfl_list-inf_landmark", prep("mtfl", MTFL), [MTFL + "/testing.txt:2", "not a finite number"],
        dataset("mtfl"), mtfl_inf_landmark),
    bad("prepare-pts-wrong_count", prep("generic", GENERIC), [GENERIC + "/img/test/face_2.pts", "67 points"],
        dataset("generic"), pts(GENERIC + "/img/test/face_2.pts", 67, 20.0)),
    bad("prepare-pts-header_disagrees", prep("ibug", W300), [W300 + "/ibug/image_0000.pts", "n_points says 70"],
        dataset("300w"), pts(W300 + "/ibug/image_0000.pts", 68, 20.0, n_declared=70)),
    bad("prepare-pts-bad_line", prep("ibug", W300), [W300 + "/afw/image_0000.pts:7", "oops"],
        dataset("300w"), line(W300 + "/afw/image_0000.pts", 6, "12.5 oops")),
    bad("prepare-box_mat-degenerate_box", prep("ibug", W300, "--test-split", "full"),
        ["bounding_boxes_helen_testset.mat", "entry 1", "degenerate"],
        dataset("300w"), boxes(BOXES + "/bounding_boxes_helen_testset.mat",
                               [("image_0000.jpg", [1, 1, 50, 50], [40, 30, 40, 60]),
                                ("image_0001.jpg", [1, 1, 50, 50], [10, 10, 60, 60])])),
    bad("prepare-generic_boxes-degenerate_box", prep("generic", GENERIC),
        [GENERIC + "/train_boxes.txt:2", "degenerate"],
        dataset("generic"), line(GENERIC + "/train_boxes.txt", 1, "40 40 10 60")),  # left = right
    bad("prepare-cofw_mat-degenerate_box", prep("cofw", COFW), [COFW_TRAIN, "face 3", "degenerate"],
        dataset("cofw"), cofw_face3_height0),
    bad("prepare-box_mat-box_outside_image", prep("ibug", W300), ["ibug/image_0000", "does not overlap"],
        dataset("300w"), boxes(BOXES + "/bounding_boxes_ibug.mat",
                               [("image_0000.jpg", [1, 1, 50, 50], [500, 400, 560, 470]),
                                ("image_0001.jpg", [1, 1, 50, 50], [10, 10, 60, 60])])),
    bad("prepare-pts-landmark_outside_image", prep("generic", GENERIC), ["img/train/face_0", "landmark 11", "outside"],
        dataset("generic"), pts(GENERIC + "/img/train/face_0.pts", 68, 40.0, at={10: (900.0, 40.0)})),
    bad("prepare-image-unreadable", prep("generic", GENERIC), [GENERIC + "/img/test/face_1.png", "unreadable"],
        dataset("generic"), write(GENERIC + "/img/test/face_1.png", b"\x89PNG broken")),
    bad("prepare-out-unwritable",
        Case((PREP, "--dataset", "synth", "--n-train", "6", "--n-test", "2", "--copies", "2",
              "--out", "{blocked}/run/data", "--quiet"), ("{blocked}/run/data",)), ["{blocked}"]),
    # tools/make_nets.py
    bad("make_nets-run-unwritable",
        Case(("tools/make_nets.py", "--run", "{blocked}/run", "--layout", "5"), ("{blocked}/run/nets",)),
        ["{blocked}"]),
    # tools/run_stage.py
    bad("run_stage-init-missing", stage2("{tmp}/nope.caffemodel"), ["{tmp}/nope.caffemodel"]),
    bad("run_stage-init-empty", stage2("{tmp}/empty.caffemodel"), ["{tmp}/empty.caffemodel"],
        empty("{tmp}/empty.caffemodel")),
    bad("run_stage-init-truncated", stage2("{tmp}/cut.caffemodel"), ["{tmp}/cut.caffemodel"],
        truncated(BM, "{tmp}/cut.caffemodel")),
    bad("run_stage-init-not_netparameter", stage2("{tmp}/text.caffemodel"), ["{tmp}/text.caffemodel"],
        not_netparameter("{tmp}/text.caffemodel")),
    bad("run_stage-init-other_layout", stage2("{bm68}"), ["{bm68}", "conv43"]),  # the first layer that does not fit
    bad("run_stage-weights-missing", stage2(BM, "{tmp}/nope.json"), ["{tmp}/nope.json"]),
    bad("run_stage-weights-empty", stage2(BM, "{tmp}/w.json"), ["{tmp}/w.json"], empty("{tmp}/w.json")),
    bad("run_stage-weights-other_net", stage2(BM, "{w68}"), ["{w68}", "layout 68"]),
    bad("run_stage-train_h5-missing", stage1(), ["{run}/data/train_000.h5"],
        NO_DATA_MANIFEST, unlink("{run}/data/train_000.h5")),
    bad("run_stage-train_h5-empty", stage1(), ["{run}/data/train_000.h5"],
        NO_DATA_MANIFEST, empty("{run}/data/train_000.h5")),
    bad("run_stage-train_h5-dataset_missing", stage1(), ["{run}/data/train_000.h5", "landmarks"],
        NO_DATA_MANIFEST, h5("{run}/data/train_000.h5", drop="landmarks")),
    bad("run_stage-train_h5-wrong_shape", stage1(), ["{run}/data/train_000.h5", "landmarks"],
        NO_DATA_MANIFEST, h5("{run}/data/train_000.h5", reshape="landmarks")),
    bad("run_stage-train_h5-nan_landmark", stage1(), ["{run}/data/train_000.h5", "landmarks", "finite"],
        NO_DATA_MANIFEST, h5("{run}/data/train_000.h5", nan="landmarks")),
    bad("run_stage-train_list-empty_split", stage1(), ["{run}/data/train.txt", "empty"],
        NO_DATA_MANIFEST, write("{run}/data/train.txt", "")),
    bad("run_stage-train_h5-changed", stage1(), ["{run}/data/train_000.h5", "differs"],  # the data manifest's checksum
        flip("{run}/data/train_000.h5")),
    bad("run_stage-out-unwritable", stage1("{blocked}/models/bm"), ["{blocked}"]),
    # the torch engine's device options (docs/GPU.md): named before training, or by the worker
    bad("run_stage-device-unknown", replace(stage1(), argv=stage1().argv + ("--engine", "torch", "--device", "gpu")),
        ["--device 'gpu'", "cpu, cuda or cuda:N"]),
    bad("run_stage-device-caffe_gpu", replace(stage1(), argv=stage1().argv + ("--device", "cuda")),
        ["--device cuda", "--engine torch"]),
    bad("run_stage-device-past_last", replace(stage1(), argv=stage1().argv + ("--engine", "torch", "--device",
                                                                             "cuda:99", "--bn-stats", "running")),
        ["--device cuda:99", "visible"]),
    bad("run_stage-tf32-on_cpu", replace(stage1(), argv=stage1().argv + ("--engine", "torch", "--tf32", "on")),
        ["--tf32 on", "--device cpu"]),
    bad("run_stage-tf32-not_a_switch", replace(stage1(), argv=stage1().argv + ("--tf32", "maybe")),
        ["--tf32", "maybe"]),
    bad("run_stage-deterministic-not_a_switch", replace(stage1(), argv=stage1().argv + ("--deterministic", "1")),
        ["--deterministic", "'1'"]),
    # tools/compute_weights.py
    bad("compute_weights-model-missing", cw("{tmp}/nope.caffemodel"), ["{tmp}/nope.caffemodel"]),
    bad("compute_weights-model-empty", cw("{tmp}/e.caffemodel"), ["{tmp}/e.caffemodel"], empty("{tmp}/e.caffemodel")),
    bad("compute_weights-model-truncated", cw("{tmp}/cut.caffemodel"), ["{tmp}/cut.caffemodel"],
        truncated(BM, "{tmp}/cut.caffemodel")),
    bad("compute_weights-model-not_netparameter", cw("{tmp}/text.caffemodel"), ["{tmp}/text.caffemodel"],
        not_netparameter("{tmp}/text.caffemodel")),
    bad("compute_weights-model-other_layout", cw("{bm68}"), ["{bm68}", "conv43"]),
    bad("compute_weights-val_h5-missing", cw(BM), ["{run}/data/val_000.h5"], unlink("{run}/data/val_000.h5")),
    bad("compute_weights-val_h5-dataset_missing", cw(BM), ["{run}/data/val_000.h5", "landmarks_image"],
        h5("{run}/data/val_000.h5", drop="landmarks_image")),
    bad("compute_weights-val_h5-wrong_shape", cw(BM), ["{run}/data/val_000.h5", "landmarks_image"],
        h5("{run}/data/val_000.h5", reshape="landmarks_image")),
    bad("compute_weights-val_h5-nan_landmark", cw(BM), ["{run}/data/val_000.h5", "landmarks_image"],
        h5("{run}/data/val_000.h5", nan="landmarks_image")),
    bad("compute_weights-val_h5-inf_iod", cw(BM), ["{run}/data/val_000.h5", "iod_image"],
        h5("{run}/data/val_000.h5", inf="iod_image")),
    bad("compute_weights-val_list-empty_split", cw(BM), ["{run}/data/val.txt", "empty"],
        write("{run}/data/val.txt", "")),
    bad("compute_weights-out-unwritable", cw(BM, "{blocked}/weights/w.json"), ["{blocked}"]),
    # tools/set_loss_weights.py
    bad("set_loss_weights-net-missing", slw("{tmp}/nope.prototxt", EQ5), ["{tmp}/nope.prototxt"]),
    bad("set_loss_weights-net-empty", slw("{tmp}/empty.prototxt", EQ5), ["{tmp}/empty.prototxt"],
        empty("{tmp}/empty.prototxt")),
    bad("set_loss_weights-net-no_loss_layers", slw(DEPLOY, EQ5), [DEPLOY, "no loss layers"]),
    bad("set_loss_weights-weights-missing", slw(STAGE2_NET, "{tmp}/nope.json"), ["{tmp}/nope.json"]),
    bad("set_loss_weights-weights-empty", slw(STAGE2_NET, "{tmp}/w.json"), ["{tmp}/w.json"], empty("{tmp}/w.json")),
    bad("set_loss_weights-weights-other_net", slw(STAGE2_NET, "{w68}"), ["{w68}", "layout 68"]),
    bad("set_loss_weights-out-unwritable", slw(STAGE2_NET, EQ5, "{blocked}/nets/n.prototxt"), ["{blocked}"]),
    # tools/assemble.py
    bad("assemble-heads-missing", asm("{tmp}/nope.caffemodel"), ["{tmp}/nope.caffemodel"]),
    bad("assemble-heads-empty", asm("{tmp}/h.caffemodel"), ["{tmp}/h.caffemodel"], empty("{tmp}/h.caffemodel")),
    bad("assemble-heads-truncated", asm("{tmp}/cut.caffemodel"), ["{tmp}/cut.caffemodel"],
        truncated(HEADS, "{tmp}/cut.caffemodel")),
    bad("assemble-heads-not_netparameter", asm("{tmp}/text.caffemodel"), ["{tmp}/text.caffemodel"],
        not_netparameter("{tmp}/text.caffemodel")),
    bad("assemble-heads-no_heads", asm(BM), [BM, "shape_pred_"]),
    bad("assemble-heads-other_layout", asm("{bm68}"), ["{bm68}"]),
    bad("assemble-listing-empty", asm("{tmp}/heads_separate.json"), ["{tmp}/heads_separate.json"],
        empty("{tmp}/heads_separate.json")),
    bad("assemble-listing-other_net", asm("{tmp}/heads_separate.json"), ["{tmp}/heads_separate.json", "68"],
        write("{tmp}/heads_separate.json",
              json.dumps({"layout": "68", "heads": {"left_eye": "models/heads.caffemodel"}}))),
    bad("assemble-listing-head_missing", asm("{tmp}/heads_separate.json"),
        ["{run}/models/head_" + CLUSTERS5[0] + ".caffemodel"],
        write("{tmp}/heads_separate.json",
              json.dumps({"layout": "5", "heads": {c: f"models/head_{c}.caffemodel" for c in CLUSTERS5}}))),
    bad("assemble-val_list-empty_split", asm(HEADS), ["{run}/data/val.txt", "empty"],  # the self-check's faces
        write("{run}/data/val.txt", "")),
    bad("assemble-out-unwritable", asm(HEADS, "{blocked}/models/am.caffemodel"), ["{blocked}"]),
    # tools/evaluate.py
    bad("evaluate-model-missing", ev("{tmp}/nope.caffemodel"), ["{tmp}/nope.caffemodel"]),
    bad("evaluate-model-empty", ev("{tmp}/e.caffemodel"), ["{tmp}/e.caffemodel"], empty("{tmp}/e.caffemodel")),
    bad("evaluate-model-truncated", ev("{tmp}/cut.caffemodel"), ["{tmp}/cut.caffemodel"],
        truncated(BM, "{tmp}/cut.caffemodel")),
    bad("evaluate-model-not_netparameter", ev("{tmp}/text.caffemodel"), ["{tmp}/text.caffemodel"],
        not_netparameter("{tmp}/text.caffemodel")),
    bad("evaluate-model-other_layout", ev("{bm68}"), ["{bm68}", "conv43"]),
    bad("evaluate-test_h5-dataset_missing", ev(BM), ["{run}/data/test_000.h5", "crop_to_image"],
        h5("{run}/data/test_000.h5", drop="crop_to_image")),
    bad("evaluate-test_h5-wrong_shape", ev(BM), ["{run}/data/test_000.h5", "data"],
        h5("{run}/data/test_000.h5", reshape="data")),
    bad("evaluate-test_h5-nan_landmark", ev(BM), ["{run}/data/test_000.h5", "landmarks_image"],
        h5("{run}/data/test_000.h5", nan="landmarks_image")),
    bad("evaluate-test_list-empty_split", ev(BM), ["{run}/data/test.txt", "empty"], write("{run}/data/test.txt", "")),
    bad("evaluate-predictions-wrong_count",
        Case((EV, "--run", "{run}", "--predictions", "P={tmp}/pred.txt", "--speed-repeats", "0", "--overlays", "0",
              "--out", "{tmp}/eval/test"), ("{tmp}/eval/test.json",)), ["{tmp}/pred.txt", "line 1"],
        write("{tmp}/pred.txt", "\n".join(" ".join(["10"] * 9) for _ in range(6)) + "\n")),
    bad("evaluate-out-unwritable", ev(BM, "{blocked}/eval/test"), ["{blocked}"]),
    # tools/port.py
    bad("port-model-missing", port("{tmp}/nope.caffemodel"), ["{tmp}/nope.caffemodel"]),
    bad("port-model-empty", port("{tmp}/bm.caffemodel"), ["{tmp}/bm.caffemodel"], empty("{tmp}/bm.caffemodel")),
    bad("port-model-truncated", port("{tmp}/bm.caffemodel"), ["{tmp}/bm.caffemodel"],
        truncated(BM, "{tmp}/bm.caffemodel")),
    bad("port-model-not_netparameter", port("{tmp}/bm.caffemodel"), ["{tmp}/bm.caffemodel"],
        not_netparameter("{tmp}/bm.caffemodel")),
    bad("port-model-other_layout", port("{bm68}"), ["{bm68}", "conv43"]),
    bad("port-prototxt-missing", port(BM, prototxt="{tmp}/nope.prototxt"), ["{tmp}/nope.prototxt"]),
    bad("port-out-unwritable", port(BM, "{blocked}/port"), ["{blocked}"]),
    # tools/bn_stats.py
    bad("bn_stats-model-missing", bn("{tmp}/nope.caffemodel"), ["{tmp}/nope.caffemodel"]),
    bad("bn_stats-model-empty", bn("{tmp}/e.caffemodel"), ["{tmp}/e.caffemodel"], empty("{tmp}/e.caffemodel")),
    bad("bn_stats-model-truncated", bn("{tmp}/cut.caffemodel"), ["{tmp}/cut.caffemodel"],
        truncated(BM, "{tmp}/cut.caffemodel")),
    bad("bn_stats-model-other_layout", bn("{bm68}"), ["{bm68}", "conv43"]),
    bad("bn_stats-out-unwritable", bn(BM, "{blocked}/models/x.caffemodel"), ["{blocked}"]),
    # tools/audit.py perturb
    bad("audit_perturb-weights-missing", perturb("{tmp}/nope.json"), ["{tmp}/nope.json"]),
    bad("audit_perturb-weights-empty", perturb("{tmp}/w.json"), ["{tmp}/w.json"], empty("{tmp}/w.json")),
    bad("audit_perturb-weights-other_net", perturb("{w68}"), ["{w68}", "68"]),
    bad("audit_perturb-out-unwritable", perturb(EQ5, "{blocked}/weights/w.json"), ["{blocked}"]),
    # tools/predict.py
    bad("predict-model-missing", predict("{tmp}/nope.onnx"), ["{tmp}/nope.onnx"]),
    bad("predict-model-empty", predict("{tmp}/am.onnx"), ["{tmp}/am.onnx"], empty("{tmp}/am.onnx")),
    bad("predict-model-not_onnx", predict(BM), [BM]),
    # data_prep/extra_test.py
    bad("extra_test-run-no_data",
        Case(("data_prep/extra_test.py", "--run", "{tmp}/norun", "rest={tmp}/rest", "--quiet"),
             ("{tmp}/norun/data/rest.manifest.json",)), ["{tmp}/norun/data/manifest.json"]),
    bad("extra_test-folder-missing",
        Case(("data_prep/extra_test.py", "--run", "{run}", "rest={tmp}/nowhere", "--quiet"),
             ("{run}/data/rest.manifest.json", "{run}/data/rest.txt")), ["{tmp}/nowhere"]),
    # tools/paper_report.py
    bad("paper_report-models-missing",
        Case(("tools/paper_report.py", "--run", "{run}", "--out", "{tmp}/paper"), ("{tmp}/paper/report.json",)),
        ["{run}/models/wm.caffemodel"]),
    # tools/verify.py
    bad("verify-manifest-empty", VERIFY, ["{run}/manifest.json"], write("{run}/manifest.json", "")),
    bad("verify-data_manifest-empty", VERIFY, ["{run}/data/manifest.json"], write("{run}/data/manifest.json", "")),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path, request):
    x = Inputs(tmp_path, request)
    for step in case.setup:
        step(x)
    script, *args = map(x, case.argv)
    names = [x(name) for name in case.names]
    finals = [x.path(p) for p in case.finals]
    proc = tool(script, *args, check=False, timeout=300, env={"GLOG_minloglevel": "2"})
    err = proc.stderr
    assert proc.returncode == case.status, f"exit {proc.returncode}\n{err[-3000:]}\n{proc.stdout[-1000:]}"
    assert "Traceback" not in err, err[-3000:]
    missing = [name for name in names if name not in err]
    assert not missing, f"stderr does not name {missing}:\n{err[-3000:]}"
    left = [str(p) for p in finals if p.exists()]
    assert not left, f"written under a final name: {left}"
