"""Data preparation (METHOD §1, §6, §7): dataset readers, the synthetic face set, the
paper's five-step augmentation, and the HDF5 / LMDB writers Caffe reads.

Modules:
  readers   300-W, COFW, MTFL/AFLW and a generic format -> `Sample`s (0-based pixels)
  synth     the built-in synthetic faces, written in the 300-W layout
  augment   crops: the five augmentation steps for training, box crops for val/test
  pool      worker processes (from a fork server) and the shared memory they write into
  writers   HDF5 (+ list files) and LMDB (images + targets), and reading them back
  sheet     contact sheets (faces with their landmarks drawn)
  pipeline  `prepare`: the whole job behind data_prep/prepare.py
  extra     extra test splits of a run (another folder's test faces, whole or reduced to 80 px)

May import: `mcl.method` (layouts), `mcl.fileio` and `mcl.caffe`'s file layer (the LMDB Datum);
never pycaffe.
"""
