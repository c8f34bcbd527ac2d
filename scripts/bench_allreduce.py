"""Time one gradient allreduce of each model, as the data-parallel optimizer does it (one flat float32 buffer).

    mpiexec -n 2 python scripts/bench_allreduce.py                 # CPU ranks, MPI
    mpiexec -n 2 python scripts/bench_allreduce.py --device gpu    # one GPU per rank, NCCL

Prints, on rank 0, the median and range over ``--repeats`` allreduces ("mean") of the D and G
gradient buffers of each model at its default widths, and the bandwidth that gives
(2 (R-1)/R x bytes / seconds, the ring allreduce's bus bandwidth).
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import sys
import time

import numpy as np

from npsn import backend
from npsn.distributed import launch
from npsn.gan.models import build_gan


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=backend.DEVICES, default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    comm = launch.start()
    launch.place_rank(args.device, comm)
    xp = backend.xp_for(args.device)
    for name in ("cnn", "resnet"):
        G, D = build_gan(name)
        for part, model in (("D", D), ("G", G)):
            n = sum(p.data.size for p in model.parameters())
            buffer = xp.ones(n, dtype=np.float32)
            comm.allreduce(buffer, "mean")  # warm-up (and NCCL's set-up)
            times = []
            for _ in range(args.repeats):
                comm.barrier()
                backend.synchronize(args.device)
                t0 = time.perf_counter()
                comm.allreduce(buffer, "mean")
                backend.synchronize(args.device)
                times.append(time.perf_counter() - t0)
            if comm.rank == 0:
                t = float(np.median(times))
                bus = 2 * (comm.size - 1) / comm.size * 4 * n / t / 1e9
                print(f"{name} {part}: {n:,} parameters, {4 * n / 1e6:.2f} MB: median {t * 1e3:.2f} ms "
                      f"[{min(times) * 1e3:.2f}, {max(times) * 1e3:.2f}] over {args.repeats}, "
                      f"bus bandwidth {bus:.1f} GB/s ({comm.size} ranks, {args.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
