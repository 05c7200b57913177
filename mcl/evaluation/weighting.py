"""The loss weights of a run from a model's validation errors: Eq. 5 after BM, Eq. 9 after WM.

b_j (Eq. 5) and w_j (Eq. 9) are each landmark's mean normalised error on the validation
split Omega_v; the arithmetic is mcl.method.loss_weights'. The file is written durably and
recorded in the run manifest with the model's provenance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mcl.caffe.runfiles import run_layout
from mcl.evaluation.evaluate import validation_errors
from mcl.fileio import atomic_write
from mcl.method import loss_weights
from mcl.method.stages import ALPHA
from mcl.records import manifest, provenance


def write_weights(run: Path, model: Path, eq: int, out: Path, alpha: float = ALPHA, split: str = "val"):
    """Eq. 5 (`eq` 5) or Eq. 9 (`eq` 9) from `model`'s errors on `split`, written to `out`; returns
    (the document, its weight vectors as (name, vector) rows, the layout)."""
    t0 = time.time()
    run, model = Path(run).resolve(), Path(model)
    layout = run_layout(run)
    errors, res = validation_errors(run, model, layout, split)
    common = dict(errors=[float(e) for e in errors], split=split, faces=res["inter_ocular"]["faces"],
                  model=str(model.resolve()), mean_error=res["inter_ocular"]["mean_error"],
                  provenance=provenance.trained_with(run, model.resolve()))
    if eq == 5:
        doc = loss_weights.document(layout, "eq5", weights=loss_weights.eq5(errors), **common)
        rows = [("all", doc["weights"])]
    else:
        doc = loss_weights.document(layout, "eq9", clusters=loss_weights.eq9(errors, layout, alpha), alpha=alpha,
                                    **common)
        rows = list(doc["clusters"].items())
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    manifest.record(run, Path(out).resolve(), f"weights-eq{eq}", {"eq": eq, "alpha": alpha, "split": split},
                    [model] + sorted(run.glob(f"data/{split}*.h5")), time.time() - t0, provenance=doc["provenance"])
    return doc, rows, layout
