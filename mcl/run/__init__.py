"""The run folder: what a run is made with and what made each of its files.

  manifest    RUN/manifest.json: every artifact's stage, settings, input checksums and wall time
  provenance  what a model was trained with (schedule, seed, engine, BatchNorm statistics), from the manifest
  verify      `make verify`: every artifact against its recorded checksum; inputs checked before a stage

May import: `mcl.method`, `mcl.caffe` (its file layer, never pycaffe), `mcl.data` and `mcl.fileio`.
"""
