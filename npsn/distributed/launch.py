"""What ``scripts/train_cifar.py --distributed`` needs besides the trainer: start-up, placement, agreement.

* :func:`start`: the communicator, and uncaught exceptions turned into an MPI Abort;
* :func:`place_rank`: GPU rank r uses device ``local_rank mod`` (GPUs on its node); CPU ranks
  split the node's cores (npsn's host threads, :func:`npsn.backend.threads.set_num_threads`);
* :func:`agree`: every rank reports its validation problem (or None) and all get the first one,
  so that every rank stops before anything is written, or none does;
* :class:`Ranks`: the ranks as the ``processes`` of a :class:`~npsn.gan.run.Run`, which uses the
  three above.
"""
import os
import signal
import sys

from npsn import backend
from npsn.distributed.comm import create_communicator, abort_on_uncaught_exception
from npsn.distributed.trainer import DistributedTrainer, StopRequest, unsupported
from npsn.backend import threads
from npsn.gan.run import RunError, flag
from npsn.utils.console import say


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


class Ranks:
    """The ranks of a data-parallel run (``mpiexec -n R python scripts/train_cifar.py --distributed``), as the
    ``processes`` of a :class:`~npsn.gan.run.Run`: :class:`~npsn.gan.run.OneProcess`'s attributes and methods.

    Every rank checks the run and builds its :class:`~npsn.distributed.trainer.DistributedTrainer`;
    the ranks then agree (the first problem of any rank stops all of them before anything is
    written); rank 0 alone takes the run directory, writes and prints. A failure that only some
    ranks see stops all of them (:meth:`stop_all`, an MPI Abort).

    Args:
        comm: the communicator (:mod:`npsn.distributed.comm`).
        sync_bn: G's BatchNorm uses the global batch's statistics (default); False: each rank's own.
    """

    def __init__(self, comm, sync_bn=True):
        self.comm, self.sync_bn = comm, sync_bn
        self.stop = StopRequest()  # set by a signal on any rank; every rank stops after the same iteration
        self.root = comm.rank == 0
        self.rank_prefix = f"rank {comm.rank}: "
        self.placed = None  # this rank's device, in words (place)

    @classmethod
    def start(cls, sync_bn=True):
        """The ranks of this run (:func:`start`); DistributedError when MPI cannot be used."""
        return cls(start(), sync_bn)

    def catch_signals(self):
        """Ctrl-C and SIGTERM become a stop request, which every rank honours after the same iteration
        (a KeyboardInterrupt in the middle of a collective would leave the other ranks waiting)."""
        signal.signal(signal.SIGINT, self.stop.handler)
        signal.signal(signal.SIGTERM, self.stop.handler)

    def command(self, base):
        return f"mpiexec -n {self.comm.size} {base} --distributed"

    def check(self, config):
        """RunError when a global batch does not split over the ranks, or the run cannot be data-parallel."""
        for name in ("batch_size", "g_batch_size"):
            if getattr(config, name) % self.comm.size:
                raise RunError(f"argument {flag(name)}: {getattr(config, name)} is the global batch and must be "
                               f"divisible by the {self.comm.size} ranks; give a multiple of {self.comm.size}")
        if unsupported(config):
            raise RunError(unsupported(config))

    def place(self, device):
        self.placed = place_rank(device, self.comm)

    def trainer(self, config, images, out_dir, **options):
        return DistributedTrainer(config, images, out_dir, self.comm, sync_bn=self.sync_bn, stop=self.stop, **options)

    def agree(self, problem):
        return agree(self.comm, problem)

    def share(self, value):
        return self.comm.bcast_obj(value)

    def describe(self, config):
        per_rank = config.batch_size // self.comm.size
        return (f"data-parallel: {self.comm.name}, global batch {config.batch_size} = {self.comm.size} x {per_rank}, "
                f"G's BatchNorm {'synchronized' if self.sync_bn else 'per rank'}; rank 0: {self.placed}")

    def stop_all(self, code):
        """Stop every rank now (MPI Abort with ``code``), after a failure the others did not see."""
        say(f"error: {self.rank_prefix}stopping all {self.comm.size} ranks", file=sys.stderr)
        self.comm.abort(code)
        return code

    def barrier(self):
        self.comm.barrier()
