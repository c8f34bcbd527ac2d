"""Device work per training iteration, counted on the strict CuPy stand-in (``tests/strict_cupy``).

A GPU iteration of npsn is launch-bound: each array operation is a kernel launch with some
microseconds of Python and driver overhead, so the number of operations per iteration, the host
waits (syncs) and the host-to-device copies say how far the GPU can be kept busy. They are a
property of the code, not of the device, so they are counted the same way on any machine: one
steady-state :meth:`~npsn.gan.trainer.Trainer.train_iteration` (after ``warmup`` others) of the
model's trainer, as :mod:`benchmarks.phases` builds it, run on device "gpu" = the stand-in
(``backend.use_gpu_module``), whose counting rules are in ``strict_cupy``'s docstring. The
stand-in lives in the repository's ``tests/`` (not in the installed package): without it the
count is skipped.

The same iteration's device memory is counted there too (``strict_cupy.Memory``: the live bytes of
every array that owns its data, rounded to CuPy's 512-byte pool blocks): what is live when the
iteration starts (parameters, optimizer moments, buffers and what the layers keep between
iterations) and the peak inside it, with the operations that made the arrays live at the peak.
It is a lower bound of what a GPU needs: a real pool fragments, and cuBLAS's workspaces and the
CUDA context (some hundreds of MB) come on top.
"""
import os
import sys
import tempfile

from benchmarks.config import REPO
from npsn import backend

TESTS_DIR = os.path.join(REPO, "tests")


def import_stand_in():
    """The ``strict_cupy`` module of the repository's tests, or None when it is not there."""
    if not os.path.isfile(os.path.join(TESTS_DIR, "strict_cupy", "__init__.py")):
        return None
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    import strict_cupy

    return strict_cupy


def count_iteration(config, model, warmup=2):
    """``{"ops", "syncs", "h2d", "d2h", "top", "start_bytes", "peak_bytes", "peak_by"}`` of one steady-state iteration.

    Counted on the stand-in for ``model`` as ``config`` builds it. ``top``: the 10 most frequent
    operations, ``[[name, count], ...]``; ``start_bytes`` / ``peak_bytes``: device bytes live when
    the iteration starts and at its peak; ``peak_by``: the 5 operations whose arrays hold the most
    of that peak, ``[[name, bytes], ...]``. None without the stand-in.
    """
    from benchmarks.phases import make_trainer

    strict_cupy = import_stand_in()
    if strict_cupy is None:
        return None
    on_stand_in = dict(vars(config), device="gpu", memory="off", compare="none")
    with backend.use_gpu_module(strict_cupy.cupy), tempfile.TemporaryDirectory() as out_dir:
        trainer, _ = make_trainer(type(config)(**on_stand_in), model, out_dir)
        for _ in range(warmup):
            trainer.train_iteration()
        with strict_cupy.counting() as counts:
            trainer.train_iteration()
    return {"ops": counts.ops, "syncs": counts.syncs, "h2d": counts.h2d, "d2h": counts.d2h,
            "top": [[name, n] for name, n in counts.by_name.most_common(10)],
            "start_bytes": counts.start_bytes, "peak_bytes": counts.peak_bytes,
            "peak_by": [[name, n] for name, n in counts.peak_by_name.most_common(5)]}
