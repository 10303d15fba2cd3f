"""One torch thread for the whole suite: with torch's default of one thread per core, a busy
2-core machine ran the suite about 10x slower (one test spun for 25 minutes). The environment
variables reach the subprocesses that tests start (the command line, the examples)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
