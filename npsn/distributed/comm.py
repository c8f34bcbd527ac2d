"""Communicators: the ranks of a data-parallel run and their collectives; the one module that imports mpi4py.

Two implementations of one small interface (ChainerMN's ``CommunicatorBase``, cut down):

* :class:`SingleProcess` -- one rank, no MPI: every collective is the identity. A run without
  ``--distributed`` never touches MPI and works exactly as before.
* :class:`MPICommunicator` -- ``mpi4py``'s ``COMM_WORLD``. NumPy buffers go through MPI; CuPy
  buffers go through NCCL (its unique id made on rank 0 and sent over MPI), whose pieces come from
  :mod:`npsn.backend` (the one module that knows CuPy).

The interface: ``rank``, ``size``, ``local_rank``/``local_size`` (this node's ranks: they choose
the GPU and split the CPU cores), :meth:`~SingleProcess.allreduce` (sum or mean, in place, of one
contiguous buffer), :meth:`~SingleProcess.bcast` (an array, in place), :meth:`~SingleProcess.bcast_obj`
and :meth:`~SingleProcess.allgather_obj` (picklable Python objects, for start-up and checks),
:meth:`~SingleProcess.barrier` and :meth:`~SingleProcess.abort`.

Invariant (MPI's, for every collective): all ranks call the same collectives in the same order,
with buffers of the same shape and dtype. A rank that leaves the sequence (an exception, an exit)
makes the others wait forever, so such a rank must :meth:`~SingleProcess.abort` (kill every rank)
instead of returning; :func:`abort_on_uncaught_exception` does that for uncaught exceptions.

>>> import numpy as np
>>> comm = SingleProcess()
>>> comm.allreduce(np.array([1.0, 2.0]), op="mean")
array([1., 2.])
>>> comm.rank, comm.size
(0, 1)
"""
import os
import sys
import time
import traceback

from npsn import backend

REDUCE_OPS = ("sum", "mean")

MPI_INSTALL_HINT = "install mpi4py and an MPI library, e.g. `pip install mpi4py mpich` (or `pip install -e '.[mpi]'`)"


class DistributedError(RuntimeError):
    """MPI cannot be used (mpi4py missing or broken), or the ranks disagree."""


def _check_buffer(buffer, op="sum"):
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduction {op!r}: choose one of {', '.join(REDUCE_OPS)}")
    if not buffer.flags.c_contiguous:
        raise ValueError("a collective needs one C-contiguous buffer (pack the arrays into a flat one first)")


class SingleProcess:
    """One rank, no MPI: the collectives of :class:`MPICommunicator` for ``size == 1``.

    Invariant: ``rank == local_rank == 0`` and ``size == local_size == 1``; buffers are left
    unchanged (the sum and the mean of one rank's buffer are the buffer).
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1
    name = "single process"

    def allreduce(self, buffer, op="sum"):
        """Reduce ``buffer`` (any shape, C-contiguous) over the ranks, in place: "sum" or "mean"; returns it."""
        _check_buffer(buffer, op)
        return buffer

    def bcast(self, buffer, root=0):
        """Overwrite ``buffer`` on every rank with rank ``root``'s, in place; returns it."""
        _check_buffer(buffer)
        return buffer

    def bcast_obj(self, obj, root=0):
        """Rank ``root``'s picklable ``obj`` on every rank."""
        return obj

    def allgather_obj(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        return [obj]

    def barrier(self):
        """Return once every rank has called it."""

    def abort(self, code=1):
        """Stop every rank now with exit status ``code`` (here: this process, without cleanup)."""
        sys.stderr.flush()
        os._exit(code)


class MPICommunicator(SingleProcess):
    """MPI's ``COMM_WORLD`` (mpi4py); CuPy buffers through NCCL.

    Reductions use MPI's in-place ``Allreduce`` (NumPy) or ``ncclAllReduce`` on the current
    stream (CuPy); "mean" is the sum divided by ``size`` afterwards. ``local_rank`` and
    ``local_size`` come from MPI's shared-memory split (the ranks on this node).
    """

    def __init__(self, mpi_comm=None):
        MPI = import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._nccl = None  # the NCCL communicator, made at the first CuPy collective (on the current GPU)
        self.name = f"MPI ({' '.join(MPI.Get_library_version().split()[:3])}), {self.size} ranks"

    def _nccl_comm(self):
        if self._nccl is None:
            unique_id = backend.nccl_unique_id() if self.rank == 0 else None
            self._nccl = backend.nccl_communicator(self.size, self.comm.bcast(unique_id, root=0), self.rank)
        return self._nccl

    def allreduce(self, buffer, op="sum"):
        _check_buffer(buffer, op)
        if backend.device_of(buffer) == "gpu":
            backend.nccl_allreduce_sum(self._nccl_comm(), buffer)
        else:
            self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)
        if op == "mean":
            buffer /= self.size
        return buffer

    def bcast(self, buffer, root=0):
        _check_buffer(buffer)
        if backend.device_of(buffer) == "gpu":
            backend.nccl_bcast(self._nccl_comm(), buffer, root)
        else:
            self.comm.Bcast(buffer, root=root)
        return buffer

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        # mpiexec relays each rank's output asynchronously and Abort kills the ranks at once: give it a
        # moment to pass on the message that says why (without it the message was lost in ~1 run of 10)
        time.sleep(0.5)
        self.comm.Abort(code)


def import_mpi():
    """``mpi4py.MPI``, imported on first use (mpi4py is an optional extra); DistributedError if it cannot be."""
    try:
        from mpi4py import MPI
    except Exception as exc:  # ImportError, or an MPI library that fails to load
        raise DistributedError(f"--distributed needs mpi4py, which could not be imported "
                               f"({type(exc).__name__}: {exc}); {MPI_INSTALL_HINT}") from None
    return MPI


def launched_by_mpi():
    """True when this process was started by an MPI launcher (mpiexec/mpirun of MPICH or Open MPI, or srun)."""
    return any(name in os.environ for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_SIZE"))


def create_communicator():
    """The communicator of this process: an :class:`MPICommunicator` over every rank mpiexec started."""
    return MPICommunicator()


def abort_on_uncaught_exception(comm):
    """Make an uncaught exception on any rank print its traceback, then stop every rank (MPI Abort).

    Without it the failed rank exits and the others wait forever in their next collective
    (ChainerMN's ``global_except_hook``; ``python -m mpi4py`` does the same).
    """
    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        print(f"error: rank {comm.rank} of {comm.size} failed ({kind.__name__}); stopping all ranks",
              file=sys.stderr)
        comm.abort(1)

    sys.excepthook = hook
