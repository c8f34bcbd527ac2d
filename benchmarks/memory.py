"""Host memory: RSS, page faults, allocator reuse, and peak-memory probes in fresh processes.

**Probes.** Peak host RSS (and, on the GPU, device memory: CuPy's pool, PyTorch's peak allocated
and reserved) is measured for each side in a fresh process (``scripts/bench.py --probe-memory
SIDE``, with the run's flags, ``--malloc`` included) that builds one model and runs
:data:`PROBE_ITERATIONS` training iterations (the second one has Adam's moments as well as the
step's temporaries), so that neither side's freed-but-kept memory inflates the other's. The
torch process builds the npsn models it copies the weights from and releases them before training.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile

from benchmarks.config import REPO

MIB = 2**20
PROBE_ITERATIONS = 2
BENCH_SCRIPT = os.path.join(REPO, "scripts", "bench.py")


def _proc_status(field):
    """A ``VmXXX`` field of /proc/self/status in bytes, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss():
    return _proc_status("VmRSS")


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    """Peak RSS in bytes since start or the last :func:`reset_peak_rss`."""
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def freed_memory_is_reused(nbytes=64 * MIB):
    """Allocate, touch and free ``nbytes`` twice; True if the second time faulted in (almost) no pages.

    Measures what the allocator does with a large freed block: keep it for reuse (no faults), or
    return it to the OS, so that its pages fault in again (at least one fault per 2 MiB, the
    transparent huge page size that NumPy asks for).
    """
    import numpy as np

    for attempt in range(2):
        before = minor_faults()
        block = np.empty(nbytes, dtype=np.uint8)
        block.fill(1)
        del block
        faults = minor_faults() - before
    return faults < nbytes / (2 * MIB) / 2


def probe_memory(config):
    """In a fresh process: build one side (``config.probe_memory``) of one model, train, print peak memory as JSON."""
    import numpy as np  # noqa: F401  (the baseline includes the libraries)

    import npsn  # noqa: F401
    from benchmarks.environment import import_torch, limit_threads
    from benchmarks.phases import NpsnSide, TorchSide, fixed_inputs, make_trainer

    model, side_name = config.models[0], config.probe_memory
    torch = None
    if side_name == "torch":
        torch, why_not = import_torch(config.device, config.threads)
        if torch is None:
            raise RuntimeError(why_not)
    limit_threads(config.threads)
    reset_peak_rss()
    baseline = current_rss()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, images = make_trainer(config, model, out_dir)
        x, z = fixed_inputs(trainer, images)
        if side_name == "npsn":
            side = NpsnSide(trainer, x, z)
        else:
            side = TorchSide(trainer, x, z)
            trainer.G = trainer.D = trainer.opt_g = trainer.opt_d = None  # release npsn's models
            if config.device == "gpu":
                torch.cuda.reset_peak_memory_stats()
        for _ in range(PROBE_ITERATIONS):
            side.iteration()
        side.synchronize()
    result = {"host_rss_baseline": baseline, "host_rss_peak": peak_rss()}
    if config.device == "gpu":
        if side_name == "npsn":
            from npsn import backend
            pool = backend.xp_for("gpu").get_default_memory_pool()
            result["device_pool_bytes"] = pool.total_bytes()  # the pool keeps freed blocks: ~ its high-water mark
        else:
            result["device_max_allocated"] = torch.cuda.max_memory_allocated()
            result["device_max_reserved"] = torch.cuda.max_memory_reserved()
    print(json.dumps(result))


def run_probe(config, model, side):
    """Peak memory of one side of one model, measured in a fresh process (a dict, or {"error": ...})."""
    command = [sys.executable, BENCH_SCRIPT, *config.probe_arguments(model, side)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])
