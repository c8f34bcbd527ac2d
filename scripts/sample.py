"""Generate images with a trained generator: a PNG grid or an .npz of uint8 images.

    python scripts/sample.py runs/cnn-20261123-120000 --n 64 --out samples.png
    python scripts/sample.py runs/cnn-20261123-120000/checkpoint.npz --n 10000 --out samples.npz --device gpu
    python scripts/sample.py runs/cond-cnn --class cat --n 64 --out cats.png     # a conditional run: one class
    python scripts/sample.py runs/cond-cnn --grid --out classes.png               # one labelled row per class

G runs in eval mode (BatchNorm's running statistics) on z ~ N(0, I) drawn from
numpy.random.default_rng(seed), generated in chunks of 250 (with a progress line when there are
more than 1,000). Missing folders of --out are created. Output by extension:

* ``.png``: one grid, --nrow images per row (default: ceil(sqrt(n)), 8 for 64 images), at most
  10,000 images (a 100 x 100 grid is 3402 x 3402 pixels);
* ``.npz``: key ``images``, uint8 (n, 3, 32, 32) NCHW, the pixels of npsn.data.pixels.unit_to_pixels
  (the values the PNG grid holds); for a conditional run also ``labels``, int32 (n,), each image's class.

A class-conditional run (trained with --conditional) draws, for each image, the class asked for:

* ``--class K``: every image of class K, an index (0..9 on CIFAR-10) or a name (``cat``; the names
  are the run's, from CIFAR-10's batches.meta);
* ``--grid`` (.png only): one row per class, --nrow images per row (default 10; --n is not used),
  the same z down each column, the class name written left of each row: the layout of the
  training run's own sample grids;
* neither: image i is of class i mod K (so --n 10000 gives 1,000 of each of 10 classes).

--class and --grid on an unconditional run, or a class the run does not have, are one-line errors.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import math
import os
import re
import sys
import time

import numpy as np

from npsn import backend
from npsn.data.pixels import unit_to_pixels
from npsn.eval.evaluation import (GENERATION_CHUNK, PROGRESS_ABOVE, RunError, class_names, cycle_labels, generate,
                                  load_run, num_classes)
from npsn.gan.models import sample_latent
from npsn.utils.images import save_class_grid, save_grid
from npsn.utils.progress import ProgressBar
from npsn.backend.threads import ThreadsError, environment_threads

DEFAULT_N = 64
MAX_GRID_IMAGES = 10_000  # a .png grid: 100 x 100 images of 34 x 34 pixels (with the padding), ~35 MB in memory
GRID_COLUMNS = 10  # --grid: images per class row when --nrow is not given (the trainer's grids have 10 too)

FORMATS = (".png", ".npz")


class UsageError(Exception):
    """A bad option: main prints it on one line and exits with status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR", help="checkpoint.npz or the run directory holding it")
    p.add_argument("--n", type=int, help=f"number of images (default {DEFAULT_N})")
    p.add_argument("--out", default="samples.png", help="output file, .png (grid) or .npz (uint8 NCHW)")
    p.add_argument("--seed", type=int, default=0, help="seeds z")
    p.add_argument("--nrow", type=int, help="images per grid row (default: ceil(sqrt(n)); with --grid 10)")
    p.add_argument("--class", dest="class_", metavar="K|NAME",
                   help="conditional runs: every image of this class (an index or a name such as cat)")
    p.add_argument("--grid", action="store_true", help="conditional runs: one labelled row per class (.png)")
    # not argparse's choices: main's backend.check_device reports a bad device in one line
    p.add_argument("--device", default="cpu", metavar="|".join(backend.DEVICES), help="cpu (NumPy) or gpu (CuPy)")
    return p.parse_args(argv)


def check_options(args):
    """UsageError for the first bad option that needs no run (checked before the checkpoint is read)."""
    if not args.out.lower().endswith(FORMATS):
        raise UsageError(f"--out {args.out}: the name must end in .png or .npz")
    if args.n is not None and args.n < 1:
        raise UsageError("--n must be at least 1")
    if args.n is not None and args.n > MAX_GRID_IMAGES and args.out.lower().endswith(".png"):
        raise UsageError(f"--n {args.n}: a .png grid holds at most {MAX_GRID_IMAGES:,} images; give --n "
                         f"{MAX_GRID_IMAGES} or less, or an --out ending in .npz")
    if args.nrow is not None and args.nrow < 1:
        raise UsageError("--nrow must be at least 1")
    if args.grid and args.class_ is not None:
        raise UsageError("--grid draws every class; give either --grid or --class")
    if args.grid and not args.out.lower().endswith(".png"):
        raise UsageError(f"--grid writes a PNG; give an --out ending in .png (not {args.out})")
    if args.grid and args.n is not None:
        raise UsageError("--grid draws --nrow images of each class (default 10); leave out --n")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; give a file name ending in .png or .npz")
    existing = os.path.dirname(os.path.abspath(args.out))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {args.out}: cannot write there ({existing} is not a writable folder)")


def resolve_class(text, names):
    """The index of ``--class text``: an index 0..K-1 or one of ``names`` (case-insensitive); UsageError else."""
    k = len(names)
    if re.fullmatch(r"-?[0-9]+", text.strip()):  # ASCII digits only: '²'.isdigit() is true, int('²') fails
        index = int(text)
        if not 0 <= index < k:
            raise UsageError(f"--class {text}: the run has {k} classes, 0..{k - 1} ({', '.join(names)})")
        return index
    lowered = [name.lower() for name in names]
    if text.strip().lower() not in lowered:
        raise UsageError(f"--class {text}: not a class of the run; give 0..{k - 1} or one of {', '.join(names)}")
    return lowered.index(text.strip().lower())


def latents_and_labels(args, config, k, names):
    """``(z (n, z_dim) on the host, labels int32 (n,) on the host or None, n)`` for the options and the run."""
    rng = np.random.default_rng(args.seed)
    z_dim, z_dist = config["z_dim"], config.get("z_dist", "normal")  # the run's distribution (uniform: sndcgan)
    if (args.class_ is not None or args.grid) and not k:
        given = "--grid" if args.grid else f"--class {args.class_}"
        raise UsageError(f"{given}: the run {args.checkpoint} is unconditional (trained without --conditional); "
                         f"leave out {given.split()[0]}")
    if args.grid:
        columns = args.nrow or GRID_COLUMNS
        if k * columns > MAX_GRID_IMAGES:
            raise UsageError(f"--grid --nrow {columns}: {k} rows of {columns} images is more than the "
                             f"{MAX_GRID_IMAGES:,} a .png grid holds; give --nrow {MAX_GRID_IMAGES // k} or less")
        z = np.tile(sample_latent(rng, columns, z_dim, z_dist), (k, 1))  # column j: the same z_j in every row
        return z, np.repeat(np.arange(k, dtype=np.int32), columns), k * columns
    n = args.n or DEFAULT_N
    z = sample_latent(rng, n, z_dim, z_dist)
    if not k:
        return z, None, n
    if args.class_ is not None:
        return z, np.full(n, resolve_class(args.class_, names), np.int32), n
    return z, cycle_labels(n, k), n


def main(argv=None):
    args = parse_args(argv)
    try:
        environment_threads()
        check_options(args)
        backend.check_device(args.device)
        config, G, _, meta = load_run(args.checkpoint, args.device)
        k = num_classes(G)
        names = class_names(meta, k) if k else []
        z, labels, n = latents_and_labels(args, config, k, names)
    except (UsageError, RunError, backend.DeviceError, ThreadsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    z = backend.to_device(z, args.device)
    y = None if labels is None else backend.to_device(labels, args.device)
    as_png = args.out.lower().endswith(".png")
    bar = ProgressBar(n) if n > PROGRESS_ABOVE else None
    chunks, t0 = [], time.perf_counter()
    for start in range(0, n, GENERATION_CHUNK):
        stop = start + GENERATION_CHUNK
        images = generate(G, z[start:stop], labels=None if y is None else y[start:stop])
        chunks.append(images if as_png else backend.to_numpy(unit_to_pixels(images)))  # npz: uint8 per chunk
        done = min(stop, n)
        if bar:
            bar.update(done, done / max(time.perf_counter() - t0, 1e-9), force=done == n)
    if bar:
        bar.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if as_png:
        xp = backend.xp_for(args.device)
        if args.grid:
            save_class_grid(xp.concatenate(chunks), args.out, names)
        else:
            save_grid(xp.concatenate(chunks), args.out, nrow=args.nrow or math.ceil(math.sqrt(n)))
    elif labels is None:
        np.savez(args.out, images=np.concatenate(chunks))
    else:
        np.savez(args.out, images=np.concatenate(chunks), labels=labels)
    what = f" of class {labels[0]} ({names[labels[0]]})" if args.class_ is not None else \
        " (one row per class)" if args.grid else ""
    print(f"wrote {n} images{what} of {config['model']} G (iteration {meta['iteration']}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
