"""What ``scripts/train_cifar.py --distributed`` needs besides the trainer: start-up, placement, agreement.

* :func:`start`: the communicator, and uncaught exceptions turned into an MPI Abort;
* :func:`place_rank`: GPU rank r uses device ``local_rank mod`` (GPUs on its node); CPU ranks
  split the node's cores (npsn's host threads, :func:`npsn.backend.threads.set_num_threads`);
* :func:`agree`: every rank reports its validation problem (or None) and all get the first one,
  so that every rank stops before anything is written, or none does.
"""
import os

from npsn import backend
from npsn.distributed.comm import create_communicator, abort_on_uncaught_exception
from npsn.backend import threads


def start():
    """The communicator of this run, with :func:`~npsn.distributed.comm.abort_on_uncaught_exception` installed."""
    comm = create_communicator()
    abort_on_uncaught_exception(comm)
    return comm


def launcher_size():
    """How many processes an MPI launcher started (from its environment), or 1."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def launcher_rank():
    """This process's rank according to an MPI launcher's environment, or 0."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def place_rank(device, comm):
    """Put this rank on its own device; returns a short description ("gpu 1 of 4", "cpu, 8 threads").

    GPU: device ``local_rank mod gpu_count`` (one GPU per rank when the node runs as many ranks as
    it has GPUs). CPU: the cores this process may use, divided by the ranks on this node, are its
    host threads (at least one); BLAS threads are set before NumPy loads by ``scripts/preamble.py``.
    """
    if device == "gpu":
        index = comm.local_rank % max(backend.gpu_count(), 1)
        backend.use_gpu(index)
        return f"gpu {index} of {backend.gpu_count()}"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    n = max(1, cores // comm.local_size)
    if "NPSN_NUM_THREADS" not in os.environ:
        threads.set_num_threads(n)
    return f"cpu, {threads.num_threads()} host threads"


def agree(comm, problem):
    """The first problem any rank reports (``"rank r: message"``, or rank 0's message as is), or None.

    A collective: every rank calls it once, with its own problem (a message) or None.
    """
    problems = comm.allgather_obj(problem)
    for rank, message in enumerate(problems):
        if message:
            return message if rank == 0 else f"rank {rank}: {message}"
    return None
