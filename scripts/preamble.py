"""The BLAS environment every script sets before NumPy is imported: ``import preamble`` as the first import.

After each matrix product, OpenBLAS's idle worker threads keep spinning for about 0.1 s waiting
for the next one, and take the cores npsn's host threads (:mod:`npsn.backend.threads`) need for
im2col, col2im and the elementwise layers. ``OPENBLAS_THREAD_TIMEOUT=4`` makes them sleep at
once. Measured on 2 cores, cnn training iteration: 1.25 s with spinning BLAS threads vs 1.11 s
with them asleep.

OpenBLAS reads the variable when it is loaded, i.e. when NumPy is first imported, so this
module must run before anything imports NumPy (or npsn, which imports it); that is why it
imports neither. ``setdefault``: a value already in the environment wins. This is the one
place the setting lives: every script imports this module first, and child processes (the
benchmark's memory probes) inherit the environment.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# The ranks an MPI launcher starts on one node share its cores: each gets cores / (ranks on the node) BLAS
# threads (MPICH's hydra sets MPI_LOCALNRANKS, Open MPI OMPI_COMM_WORLD_LOCAL_SIZE); npsn's own host
# threads are split the same way by npsn.distributed.launch.place_rank.
_local_ranks = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or "1"
if _local_ranks.isdigit() and int(_local_ranks) > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, _cores // int(_local_ranks))))
