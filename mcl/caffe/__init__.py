"""Caffe's side: generating the nets and solvers, the one layer that reads and writes Caffe's files, and
what runs inside Caffe.

  proto, schema  caffe_pb2 with protobuf only (pycaffe's generated module by file, or a built-in subset):
                 every prototxt, caffemodel and solverstate of the project is read and written through it
  caffemodel     caffemodel blobs as arrays, fitting a model to a net
  netgen         the paper's nets as NetParameters (METHOD §2-4); solvers: its SGD solvers (METHOD §5.2)
  runfiles       a run's nets and solvers as files; reweight: Eq. 4's loss weights written into a net
  check          that the Caffe we link imports and has the layers the nets need
  forward        pycaffe TEST nets: a model in its deploy net, forward passes over crops
  bnstats        the BatchNorm statistics step (TRAIN-phase forward passes in Caffe)
  assemble       AM as a caffemodel from the heads (Eq. 2-3), and the check that it equals them in Caffe
  speed          forward time as the paper measures it (pycaffe and `caffe time`)

May import: `mcl.method` and `mcl.fileio` only (everything else of `mcl` builds on this package).
pycaffe (`import caffe`) only inside the functions that run something in Caffe.
"""
