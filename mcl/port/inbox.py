"""The models in the box: real-trained assembled models (AM) under models/<name>/, which
tools/predict.py uses when no --model is given (the 68-point model; `--layout 5` the 5-point one).

Each folder is written by `package()` (`make models`) from a finished `make paper` run:
  deploy.prototxt, <name>.caffemodel   the AM for Caffe (the run's am_deploy.prototxt and am.caffemodel)
  <name>.onnx, <name>.onnx.json        the port (checked against Caffe) and its card, with the box
                                       convention of the training set, which the predictor maps a
                                       detector's box onto
  card.json, MODEL_CARD.md             the model card: data and its terms, schedule, seed, engine, the
                                       errors on every test split beside the peers' on the same faces
  <name>.int8.onnx, .int8.onnx.json   its int8 version (tools/port.py int8, mcl.port.quantize; `tools/predict.py
                                       --int8`), calibrated on validation faces of the same data, its card with
                                       the mean error beside fp32's on the test faces
  <name>.int8.pt, .int8.pt.json       the same in PyTorch (TorchScript, `tools/predict.py --int8 torch`)

The data sets are for non-commercial research; the models trained on them are shipped with a card
that says so (DATA_TERMS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mcl.data.writers import sha256_file
from mcl.evaluation.paper_report import split_title
from mcl.fileio import atomic_write
from mcl.port import convert

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# layout -> the in-box model's folder (and file stem)
IN_BOX = {"68": "mcl-68-300w", "5": "mcl-5-mtfl"}
DEFAULT_LAYOUT = "68"

# The terms the training data come under (../shared/data/README.md); a model card repeats them.
DATA_TERMS = {
    "mtfl": "MTFL (Zhang et al., CUHK; pictures from LFW, the web and AFLW, whose own licence also applies) is "
            "for non-commercial research use only, under its owners' terms. This model was trained on it and "
            "is shipped for research use under the same terms; cite the MTFL and AFLW papers when using it.",
    "300w": "300-W (i-bug, Imperial College London) is \"provided for research purposes only; commercial use is "
            "not allowed\", and the AFW and HELEN collections have their own terms. This model was trained on "
            "it and is shipped for research use under the same terms; cite the 300-W, AFW and HELEN papers "
            "when using it.",
}


class InBoxError(ValueError):
    """A missing in-box model, or a run that cannot be packaged; names the file."""


def model_dir(layout: str | None = None) -> Path:
    layout = layout or DEFAULT_LAYOUT
    if layout not in IN_BOX:
        raise InBoxError(f"no in-box model for layout {layout} (in the box: layouts {', '.join(IN_BOX)}); "
                         "give --model")
    return MODELS_DIR / IN_BOX[layout]


def default_onnx(layout: str | None = None) -> Path:
    """The in-box ONNX model of a layout (default 68 points)."""
    path = model_dir(layout) / f"{IN_BOX[layout or DEFAULT_LAYOUT]}.onnx"
    if not path.is_file():
        raise InBoxError(f"{path}: the in-box model is missing (`make models` writes it from a `make paper` run)")
    return path


def load_card(layout: str | None = None) -> dict:
    path = model_dir(layout) / "card.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InBoxError(f"{path}: cannot read the model card ({exc})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InBoxError(f"{path}: cannot read it ({exc}); run `make paper` for this run first") from None


def _errors(result: dict) -> dict:
    """A result's headline figures, in % (inter-ocular; outer corners where the layout has them)."""
    out = {"faces": result["inter_ocular"]["faces"],
           "mean_error": result["inter_ocular"]["mean_error"],
           "failure_rate_0.10": result["inter_ocular"]["failure_rate"]["0.10"]}
    if "outer_corners" in result:
        out["mean_error_outer_corners"] = result["outer_corners"]["mean_error"]
        out["failure_rate_outer_corners_0.10"] = result["outer_corners"]["failure_rate"]["0.10"]
    return out


def card_of(run: Path, name: str, splits: list[str], box_convention: str, terms: str, data_title: str) -> dict:
    """The model card of a run's AM, as data, from the run's records and its paper report's evaluations."""
    report = _read_json(run / "paper" / "report.json")
    manifest = _read_json(run / "data" / "manifest.json")
    evaluations = {}
    for entry in splits:  # "split" or "split=Name"
        split, _, label = entry.partition("=")
        ev = _read_json(run / "paper" / f"eval_{split}.json")
        res = ev["results"]
        evaluations[split] = {
            "title": (f"{label}: " if label else "") + split_title(split, ev),
            # the data folder by its name: the card travels without the machine it was written on
            "source": {**ev["source"], "data_root": Path(ev["source"]["data_root"]).name},
            "models": {k: _errors(v) for k, v in res.items() if k in ("BM", "WM", "AM", "BM + equal budget")},
            "peers": {k: _errors(v) for k, v in res.items() if k.startswith(("dlib", "mediapipe"))},
        }
    return {
        "name": name,
        "model": "MCL assembled model (AM): Algorithm 1 (BM -> WM -> multi-center heads -> AM), one forward of "
                 "the basic model's cost",
        "layout": manifest["settings"]["layout"],
        "box_convention": box_convention,
        "data": {"title": data_title, "dataset": manifest["source"]["dataset"],
                 "data_root": Path(manifest["source"]["data_root"]).name,
                 "reader": manifest["source"].get("reader"), "counts": manifest["counts"],
                 "crop_scale": manifest["settings"]["crop_scale"], "augment": manifest["settings"]["augment"],
                 "checksums": report.get("data")},
        "terms": terms,
        "training": {"schedule": report["schedule"], "stages": report.get("schedule_stages"),
                     "seed": report["seed"], "engine": report["engine"],
                     "wall_s": report.get("training_wall_s"), "machine": report.get("machine"),
                     "run": str(run)},
        "errors": evaluations,
        "written": time.strftime("%Y-%m-%d"),
    }


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(card: dict, files: dict[str, str]) -> str:
    d = card["data"]
    L = [f"# {card['name']}: {card['layout']} landmarks, trained on {d['title']}", "",
         card["model"] + ".", "",
         "## Data and its terms", "",
         f"- Trained on {d['title']} (`{d['dataset']}` reader, folder `{d['data_root']}`): "
         f"{d['counts']['train']['faces']} training faces ({d['counts']['train']['crops']} augmented crops), "
         f"{d['counts']['val']['faces']} validation faces held out.",
         f"- Box convention: `{card['box_convention']}`; test crop: a square of {d['crop_scale']:g} x the "
         "larger box side, 50 x 50 gray.", "",
         f"**Terms.** {card['terms']}", "",
         "## Training", "",
         f"Schedule `{card['training']['schedule']}`, seed {card['training']['seed']}, engine "
         f"`{card['training']['engine']}` (iterations per stage: "
         + ", ".join(f"{k} {v['max_iter']}" for k, v in (card["training"]["stages"] or {}).items()) + ").", "",
         "## Errors", "",
         "Mean error in % of the inter-ocular distance (eye centres) and, for 68 points, of the outer-eye-corner "
         "distance (outer corners); failure rate: the share of faces whose error is above 10 %.", ""]
    for split, ev in card["errors"].items():
        outer = any("mean_error_outer_corners" in v for v in ev["models"].values())
        L += [f"### {ev['title']}", "",
              "| model | mean error | failure > 10% |" + (" outer corners | failure (outer) |" if outer else ""),
              "|---|---|---|" + ("---|---|" if outer else "")]
        for label, v in [*ev["models"].items(), *ev["peers"].items()]:
            row = f"| {label} | {_pct(v['mean_error'])} | {_pct(v['failure_rate_0.10'])} |"
            if outer:
                row += f" {_pct(v.get('mean_error_outer_corners'))} | {_pct(v.get('failure_rate_outer_corners_0.10'))} |"
            L.append(row)
        L.append("")
    L += ["dlib (box): dlib's shape predictor started from the annotated face's box; dlib (detector): from its "
          "own HOG detector's box (a face it misses keeps the box prediction).", "",
          "## Files", ""]
    L += [f"- `{f}` sha256 `{h}`" for f, h in files.items()]
    return "\n".join(L) + "\n"


def package(run, name: str, out, splits: list[str], box_convention: str, terms_key: str, data_title: str,
            reference: str = "auto") -> list[Path]:
    """models/<name>/ from a finished `make paper` run: the AM's deploy net and caffemodel, its ONNX port
    (checked against Caffe by the port), and the model card (card.json, MODEL_CARD.md)."""
    run, out = Path(run), Path(out)
    prototxt, caffemodel = run / "models" / "am_deploy.prototxt", run / "models" / "am.caffemodel"
    for path in (prototxt, caffemodel):
        if not path.is_file():
            raise InBoxError(f"{path}: missing (finish `make paper` for {run} first)")
    if terms_key not in DATA_TERMS:
        raise InBoxError(f"terms {terms_key!r}: choose one of {', '.join(DATA_TERMS)}")
    card = card_of(run, name, splits, box_convention, DATA_TERMS[terms_key], data_title)
    manifest = _read_json(run / "data" / "manifest.json")
    result = convert.port(prototxt, caffemodel, name, ("onnx",), reference=reference,
                          crop_scale=manifest["settings"]["crop_scale"],
                          test_crop=manifest["settings"].get("test_crop"))
    onnx_card = result.cards[f"{name}.onnx.json"]
    onnx_card.update({"dataset": manifest["source"]["dataset"], "box_convention": box_convention,
                      "model_card": "card.json"})
    out.mkdir(parents=True, exist_ok=True)
    written = convert.write(result, out)
    atomic_write(out / "deploy.prototxt", prototxt.read_bytes())
    atomic_write(out / f"{name}.caffemodel", caffemodel.read_bytes())
    written += [out / "deploy.prototxt", out / f"{name}.caffemodel"]
    files = {p.name: sha256_file(p) for p in sorted(written) if not p.name.endswith(".json")}
    card["files"] = files
    card["port_check"] = onnx_card["check"]["all_engines"]
    atomic_write(out / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    atomic_write(out / "MODEL_CARD.md", markdown(card, files))
    return written + [out / "card.json", out / "MODEL_CARD.md"]
