"""Count the device work of one steady-state GAN training iteration on the strict CuPy stand-in.

    PYTHONPATH=. python tests/strict_cupy/count_iteration.py --model cnn --batch-size 64

Builds a :class:`npsn.gan.trainer.Trainer` on device "gpu" = the stand-in (random images, a
temporary run directory), runs ``--warmup`` iterations (first-call work: fused kernels built,
buffers allocated), then counts ``Trainer.train_iteration`` once and prints ops / syncs / h2d /
d2h, the ``--top`` most frequent operations, and the device memory: MiB live when the iteration
starts and at its peak, with the operations whose arrays hold the most of that peak. The numbers
follow the stand-in's counting rules (``strict_cupy`` docstring); no GPU is needed. Several
presets, comma-separated, are counted one after the other (the memory table of docs/gpu.md)::

    PYTHONPATH=. python tests/strict_cupy/count_iteration.py \
        --preset cnn,sngan-projection-resnet,sngan-projection-resnet-conditional --warmup 1
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

import numpy as np  # noqa: E402

import strict_cupy  # noqa: E402
from npsn import backend  # noqa: E402
from npsn.gan.trainer import Trainer, preset_config  # noqa: E402


def count_iteration(preset="cnn", batch_size=64, warmup=2, **overrides):
    """The :class:`strict_cupy.Counts` of one training iteration after ``warmup`` others."""
    config = preset_config(preset, device="gpu", batch_size=batch_size, **overrides)
    rng = np.random.default_rng(0)
    n = 4 * max(batch_size, config.g_batch_size)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, n) if config.num_classes else None
    with backend.use_gpu_module(strict_cupy.cupy), tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, images, out, labels=labels)
        for _ in range(warmup):
            trainer.train_iteration()
        with strict_cupy.counting() as counts:
            trainer.train_iteration()
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cnn", help="a preset, or several comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    mib = 2**20
    for preset in args.preset.split(","):
        c = count_iteration(preset, args.batch_size, args.warmup)
        g_batch = preset_config(preset).g_batch_size or args.batch_size
        print(f"{preset}, batch {args.batch_size} (G batch {g_batch}): ops={c.ops} syncs={c.syncs} h2d={c.h2d} "
              f"d2h={c.d2h}; device memory {c.start_bytes / mib:.1f} MiB live at the start, peak "
              f"{c.peak_bytes / mib:.1f} MiB", flush=True)
        print("  at the peak, made by: " + ", ".join(f"{name} {n / mib:.1f} MiB"
                                                    for name, n in c.peak_by_name.most_common(args.top)))
        for name, n in c.by_name.most_common(args.top):
            print(f"  {n:5d}  {name}")


if __name__ == "__main__":
    main()
