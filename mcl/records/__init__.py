"""A run folder's records: what a run is made with, what made each of its files, and who writes it now.

  settings    RUN/run.json: the run's settings, written once as JSON by tools/make_nets.py and read back
  manifest    RUN/manifest.json: every artifact's stage, settings, input checksums and wall time
  provenance  what a model was trained with (schedule, seed, engine, precision, BatchNorm statistics),
              from the manifest
  verify      `make verify`: every artifact against its recorded checksum; inputs checked before a stage
  lock        RUN/.lock: one writer in a run folder at a time (the tools that write take it)

The stage runner (mcl.run) writes these records; the evaluation (mcl.evaluation) and the port
(mcl.port) read them, and so stand on this package, not on the runner or the torch engine.

May import: `mcl.method`, `mcl.caffe` (its file layer: proto, caffemodel, netgen, runfiles, check), `mcl.data`
(verify's checks of the data files) and `mcl.fileio`; not `mcl.engine`, `mcl.run`, `mcl.evaluation` or
`mcl.port`, which build on it. No torch, no pycaffe.
"""
