"""Data-parallel training over MPI ranks (NCCL for GPU arrays), ChainerMN's design.

* :mod:`~npsn.distributed.comm`: communicators (one process; MPI through mpi4py, imported only
  here and only when asked for);
* :mod:`~npsn.distributed.optimizer`: gradients averaged in one flat allreduce per update; the
  start-up broadcast and its check;
* :mod:`~npsn.distributed.trainer`: the training loop on one rank (its slice of each global batch,
  rank 0 writes);
* :mod:`~npsn.distributed.launch`: start-up, device placement and agreement for the script.

The synchronized BatchNorm is a layer: :mod:`npsn.nn.sync_batchnorm`. Importing this package does
not import mpi4py: a single process runs without it.
"""
from npsn.distributed.comm import DistributedError, MPICommunicator, SingleProcess, create_communicator
from npsn.distributed.optimizer import MultiNodeOptimizer, create_multi_node_optimizer

__all__ = ["DistributedError", "MPICommunicator", "SingleProcess", "create_communicator", "MultiNodeOptimizer",
           "create_multi_node_optimizer"]
