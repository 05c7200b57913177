"""Evaluation and the audit: the paper's metrics, predictions files, reports and plots, the ablations.

  evaluate      a model over a split and the paper's metrics (METHOD §7), normalised by the inter-ocular distance
  job           one evaluation of several models and predictions files (tools/evaluate.py)
  predictions   the predictions-file format, read and written
  report        markdown tables, CED curves, overlays of the best and worst faces
  curves        learning curves of a stage (trained for the curve, or its kept snapshots scored)
  audit         the seven ablations and the equal-budget control (METHOD §10); audit_report: their report
  summary       the run's one-page summary
  audit_model   Algorithm 1 in PyTorch (mcl.method.pytorch) on a second architecture (mcl.method.backbones),
                with the audit's report
  sweep         the audit across seeds (`make sweep`): per model and claim, mean, sd, 95% interval, verdict
  paper_report  the paper's experiment on real faces beside the paper's table (`make paper`)

May import: `mcl.method`, `mcl.caffe`, `mcl.data`, `mcl.records` and `mcl.fileio`; not `mcl.port`, `mcl.run`
or `mcl.engine` (the evaluation reads a run's records, never its runner or the torch engine).
pycaffe only through `mcl.caffe` and inside functions; matplotlib inside the plotting functions.
"""
