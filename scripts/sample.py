"""Generate images with a trained generator: a PNG grid or an .npz of uint8 images.

    python scripts/sample.py runs/cnn-20261123-120000 --n 64 --out samples.png
    python scripts/sample.py runs/cnn-20261123-120000/checkpoint.npz --n 10000 --out samples.npz --device gpu

G runs in eval mode (BatchNorm's running statistics) on z ~ N(0, I) drawn from
numpy.random.default_rng(seed), generated in chunks of 250 (with a progress line when there are
more than 1,000). Missing folders of --out are created. Output by extension:

* ``.png``: one grid, --nrow images per row (default: ceil(sqrt(n)), 8 for 64 images);
* ``.npz``: key ``images``, uint8 (n, 3, 32, 32) NCHW, the pixels of npsn.data.pixels.unit_to_pixels
  (the values the PNG grid holds).
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import math
import os
import sys
import time

import numpy as np

from npsn import backend
from npsn.data.pixels import unit_to_pixels
from npsn.eval.evaluation import GENERATION_CHUNK, RunError, generate, load_run
from npsn.gan.models import sample_latent
from npsn.utils.images import save_grid
from npsn.utils.progress import ProgressBar

PROGRESS_ABOVE = 1000  # images: fewer take a few seconds, with no progress line

FORMATS = (".png", ".npz")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN_DIR", help="checkpoint.npz or the run directory holding it")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--out", default="samples.png", help="output file, .png (grid) or .npz (uint8 NCHW)")
    p.add_argument("--seed", type=int, default=0, help="seeds z")
    p.add_argument("--nrow", type=int, help="images per grid row (default: ceil(sqrt(n)))")
    # not argparse's choices: main's backend.check_device reports a bad device in one line
    p.add_argument("--device", default="cpu", metavar="|".join(backend.DEVICES), help="cpu (NumPy) or gpu (CuPy)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.out.lower().endswith(FORMATS):
        print(f"error: --out {args.out}: the name must end in .png or .npz", file=sys.stderr)
        return 2
    if args.n < 1:
        print("error: --n must be at least 1", file=sys.stderr)
        return 2
    if args.nrow is not None and args.nrow < 1:
        print("error: --nrow must be at least 1", file=sys.stderr)
        return 2
    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out):
        print(f"error: --out {args.out} is a folder; give a file name ending in .png or .npz", file=sys.stderr)
        return 2
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        print(f"error: --out {args.out}: cannot write there ({existing} is not a writable folder)", file=sys.stderr)
        return 2
    try:
        backend.check_device(args.device)
        config, G, _, meta = load_run(args.checkpoint, args.device)
    except (RunError, backend.DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    z = backend.to_device(  # z from the run's distribution (normal, or uniform for chainer-gan-lib-sndcgan)
        sample_latent(np.random.default_rng(args.seed), args.n, config["z_dim"], config.get("z_dist", "normal")),
        args.device)
    as_png = args.out.lower().endswith(".png")
    bar = ProgressBar(args.n) if args.n > PROGRESS_ABOVE else None
    chunks, t0 = [], time.perf_counter()
    for start in range(0, args.n, GENERATION_CHUNK):
        images = generate(G, z[start:start + GENERATION_CHUNK])
        chunks.append(images if as_png else backend.to_numpy(unit_to_pixels(images)))  # npz: uint8 per chunk
        done = min(start + GENERATION_CHUNK, args.n)
        if bar:
            bar.update(done, done / max(time.perf_counter() - t0, 1e-9), force=done == args.n)
    if bar:
        bar.close()
    os.makedirs(folder, exist_ok=True)
    if as_png:
        xp = backend.xp_for(args.device)
        save_grid(xp.concatenate(chunks), args.out, nrow=args.nrow or math.ceil(math.sqrt(args.n)))
    else:
        np.savez(args.out, images=np.concatenate(chunks))
    print(f"wrote {args.n} images of {config['model']} G (iteration {meta['iteration']}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
