"""Benchmark npsn's SN-GAN models, optionally against the same architecture in PyTorch.

    python scripts/bench.py                                   # cpu, cnn and resnet, batch 64
    python scripts/bench.py --compare torch --threads 2
    python scripts/bench.py --compare torch --repeats cnn=10,resnet=3 --warmup cnn=2,resnet=1
    python scripts/bench.py --device gpu --compare torch

Per model (--models), it times five phases of a training step in float32, training mode:
D forward, G forward, D update, G update, and an iteration of one D and one G update
(benchmarks/phases.py). Each time is the median of --repeats timed calls after --warmup untimed
ones (benchmarks/timing.py); both take N or cnn=N,resnet=M.

--compare torch builds the same architecture in PyTorch from npsn's module tree and initial
weights (npsn.testing.torch_reference), checks that both compute the same (outputs and D's input
gradient in float64 and float32, losses over two training iterations), then times the two
alternately, idling --settle seconds before each timed call, and prints npsn / torch ratios.

--threads N limits BLAS, OpenMP, npsn's host threads and PyTorch to N threads; --malloc no-trim
(the default) keeps freed host memory for reuse (npsn.utils.allocator.keep_freed_memory), --malloc
default leaves glibc as it is (benchmarks/environment.py). Peak memory is probed for each side in
a fresh process (--memory probe, the default; benchmarks/memory.py). --breakdown splits npsn's
iteration into matrix products, im2col/col2im and the rest (benchmarks/breakdown.py).

Output: a table per model, then one JSON line with every number (--json-only: the JSON only).
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import os
import sys

# the repository root: `benchmarks` (not installed) and npsn, without installing it
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.config import parse_args, set_thread_environment  # noqa: E402  (standard library only: no NumPy yet)


def main(argv=None):
    """Run the benchmark; returns the exit status (2, with one line on stderr, for an unusable device)."""
    config = parse_args(argv, description=__doc__)
    set_thread_environment(config.threads)  # read when NumPy loads its BLAS: before the harness imports it
    from benchmarks import harness
    from npsn import backend
    from npsn.backend.threads import ThreadsError, environment_threads

    try:
        environment_threads()  # a bad NPSN_NUM_THREADS is one line, before anything runs
        backend.check_device(config.device)  # runs a few kernels on the GPU before any model is built
    except (backend.DeviceError, ThreadsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    harness.main(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
