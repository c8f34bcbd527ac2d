"""The process a benchmark runs in: threads, allocator, PyTorch's set-up, and the report of all three.

**Threads.** ``--threads N`` sets OMP/OPENBLAS/MKL_NUM_THREADS before NumPy is imported
(:func:`benchmarks.config.set_thread_environment`), then :func:`limit_threads` limits every BLAS
and OpenMP pool with threadpoolctl when it is installed, sets npsn's host threads
(:func:`npsn.backend.threads.set_num_threads`, which split im2col/col2im and elementwise kernels)
and calls ``torch.set_num_threads(N)``. Without it each library keeps its default. The BLAS in use
and its thread count are reported, and so is every ``OPENBLAS_*``/``OMP_*``/``MKL_*``/``MALLOC_*``/
``NPSN_*`` variable (``OPENBLAS_THREAD_TIMEOUT`` comes from ``scripts/preamble.py``).

**Allocator** (``--malloc``, Linux/glibc). A training step allocates and frees arrays of
hundreds of MB (im2col matrices, activations). glibc serves blocks that large with ``mmap`` and
``munmap`` s them when freed, so every step faults (and the kernel zeroes) them in again.
``--malloc no-trim`` (the default) calls :func:`npsn.utils.allocator.keep_freed_memory` at the
start, as the training script does (every block from the heap, the heap never trimmed), so freed
memory is reused; ``--malloc default`` leaves glibc's dynamic defaults. Both sides run in the one
process, hence under the same setting; the cost of ``no-trim`` is that the process keeps its peak
memory. Whether freed memory is actually reused is measured by the harness
(:func:`benchmarks.memory.freed_memory_is_reused`) and reported.
"""
import os
import platform
import subprocess
import sys

from benchmarks.config import REPO

REPORTED_VARIABLE_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "MALLOC_", "NPSN_")


def is_glibc():
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def apply_allocator(malloc):
    """Apply the ``--malloc`` setting; returns whether :func:`~npsn.utils.allocator.keep_freed_memory` was applied.

    ``"no-trim"``: keep freed memory for reuse (False where the C library is not glibc);
    ``"default"``: change nothing.
    """
    if malloc != "no-trim":
        return False
    from npsn.utils.allocator import keep_freed_memory

    return keep_freed_memory()


def limit_threads(n):
    """Limit every BLAS/OpenMP pool loaded so far, npsn's host threads and PyTorch's (if imported) to ``n`` threads."""
    if n is None:
        return
    from npsn.backend import threads
    threads.set_num_threads(n)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(limits=n)
    except ImportError:
        pass  # the environment variables set before importing NumPy still apply
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def thread_pools():
    """[{library, version, threads, ...}] of the BLAS and OpenMP pools loaded in this process."""
    try:
        import threadpoolctl
    except ImportError:
        import numpy as np
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            return [{"library": blas.get("name"), "version": blas.get("version"), "threads": None}]
        except Exception:
            return []
    return [{"library": info.get("internal_api"), "version": info.get("version"), "threads": info.get("num_threads"),
             "threading_layer": info.get("threading_layer"), "architecture": info.get("architecture"),
             "file": os.path.basename(info.get("filepath", ""))} for info in threadpoolctl.threadpool_info()]


def import_torch(device, threads):
    """(torch, None) if PyTorch can run the comparison on ``device``, else (None, why not).

    On the GPU, TF32 is turned off in PyTorch so that both sides compute in float32.
    """
    try:
        import torch
    except ImportError as exc:
        return None, f"PyTorch is not importable ({exc})"
    if device == "gpu" and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no CUDA device"
    if device == "gpu":
        # float32 on both sides: no TF32 in cuDNN convolutions or cuBLAS matrix products
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    limit_threads(threads)
    return torch, None


def _git(*command):
    try:
        return subprocess.run(["git", "-C", REPO, *command], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_name():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def environment_report(config, torch, allocator_applied):
    """The machine, versions, threads and allocator of this run, as a JSON-ready dict.

    Whether freed memory is reused is measured by the harness (:mod:`benchmarks.memory` builds on
    this module, not the other way round) and added under ``malloc``.
    """
    import numpy as np

    import npsn
    from npsn.backend import threads as npsn_threads

    versions = {"python": platform.python_version(), "numpy": np.__version__, "npsn": npsn.__version__}
    if torch is not None:
        versions["torch"] = torch.__version__
    gpu_name = None
    if config.device == "gpu":
        from npsn import backend
        cupy = backend.xp_for("gpu")
        versions["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {
        "device": config.device, "gpu": gpu_name, "cpu": _cpu_name(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "batch_size": config.batch_size, "sn_mode": config.sn_mode, "versions": versions, "settle_s": config.settle,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git": {"commit": _git("rev-parse", "--short", "HEAD"),
                "npsn_modified": bool(_git("status", "--porcelain", "--", "npsn"))},
        "threads": {"requested": config.threads, "pools": thread_pools(), "npsn": npsn_threads.num_threads(),
                    "torch": torch.get_num_threads() if torch is not None else None},
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith(REPORTED_VARIABLE_PREFIXES)},
        "malloc": {"mode": config.malloc if is_glibc() else "unchanged (not glibc)",
                   "keep_freed_memory": allocator_applied},
    }
