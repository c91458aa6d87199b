"""JAX vs PyTorch benchmarks on identical weights and work (see harness.py and run.py).

PyTorch's CPU threads come from an OpenMP runtime that by default spins while
waiting at a barrier. On a machine shared with other processes (more runnable
threads than cores) a spinning thread can wait for a descheduled peer for a
whole time slice: on a 2-core machine at load 8 this made a ResNet-20 step
6x slower with 2 threads than with 1. A passive wait policy removes that
artefact and costs little on an idle machine. It must be set before torch
loads its OpenMP runtime, hence here, in the package import that precedes
every benchmark; an explicit setting in the environment wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
