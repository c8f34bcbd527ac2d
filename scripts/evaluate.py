"""Evaluate a trained run: SWD and the classifier-feature Fréchet distance of generated vs real CIFAR-10 images, GAN-test accuracy of a conditional run, and D's spectral diagnostics.

    python scripts/evaluate.py runs/cnn-20261123-120000 --data ../shared/data/cifar-10-python.tar.gz
    python scripts/evaluate.py runs/cnn-20261123-120000 --n 10000 --device gpu
    python scripts/evaluate.py runs/cond-cnn --classifier runs/classifier

Reads RUN_DIR/checkpoint.npz (G, D and the run's configuration), then

* checks its options, the run, the data and --out (its folder must exist), then
* generates --n images (at most the split's size) from a fixed z (numpy.random.default_rng([seed, 5])) with G in eval mode;
* compares them with --n real images by the Sliced Wasserstein Distance (ProGAN's SWD x 1e3 at
  32x32 and 16x16; lower is better). The real images come from the CIFAR-10 *test* split by
  default (10,000 images never used in training), or with --split train from the training
  split; either way a subset of --n distinct images drawn by numpy.random.default_rng(seed)
  (npsn.eval.evaluation.real_subset, which also picks the in-training evaluator's images);
* with the CIFAR-10 classifier of scripts/train_classifier.py (--classifier, default
  runs/classifier; without it this step is skipped with a note saying how to train one): the
  Fréchet distance between the Gaussians of its penultimate features on the real and on the
  generated images (npsn.eval.frechet; FID's formula on npsn's own ~80% classifier, so *not*
  comparable with published Inception FIDs), and for a class-conditional run the classifier's
  accuracy on the generated images of each intended class (GAN-test, Shmelkov et al. 2018; the
  generated images cycle through the classes, image i of class i mod K) next to its accuracy on
  the real images. Both use the generated images quantized to pixels, as saved;
* runs D once (eval mode) on a real batch, then reports per spectral-normalized layer the
  power-iteration sigma, the exact sigma of the reshaped weight, the normalized weight's sigma
  (~1) and the operator norm of the normalized layer on its input (what bounds the Lipschitz
  constant), and the largest gradient norm ||grad_x D(x)|| over 64 real and 64 generated images
  (a lower bound of D's Lipschitz constant) next to the product of operator norms (an upper bound,
  CNN discriminator only).

Shows its progress on stderr (each step as it starts, and a progress line while generating more
than 1,000 images); prints a table and writes everything to RUN_DIR/eval.json.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import json
import os
import sys

import numpy as np

from npsn import backend
from npsn.data.cifar10 import SPLITS, CIFAR10Error, load_cifar10
from npsn.data.pixels import pixels_to_unit, unit_to_pixels
from npsn.eval.classifier import (DEFAULT_CLASSIFIER_DIR, HOW_TO_TRAIN, ClassifierError, classifier_checkpoint_path,
                                  load_classifier)
from npsn.eval.evaluation import (GRADIENT_BATCH, RunError, class_names, cycle_labels, diagnose, find_checkpoint,
                                  generate, load_run, num_classes, real_subset)
from npsn.eval.gan_test import class_aware_measures
from npsn.gan.models import sample_latent
from npsn.utils.console import say
from npsn.backend.threads import ThreadsError, environment_threads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding checkpoint.npz")
    p.add_argument("--data", default="data", help="cifar-10-python.tar.gz or its extracted folder (default: ./data)")
    p.add_argument("--n", type=int, default=2000, help="generated and real images for SWD (default 2000)")
    p.add_argument("--split", choices=tuple(SPLITS), default="test", help="real images from this split")
    p.add_argument("--seed", type=int, default=0, help="seeds z, the real subset and SWD's patches and directions")
    # not argparse's choices: main's backend.check_device reports a bad device in one line
    p.add_argument("--device", default="cpu", metavar="|".join(backend.DEVICES), help="cpu (NumPy) or gpu (CuPy)")
    p.add_argument("--power-iterations", type=int, default=100,
                   help="power-iteration steps per layer for the operator norms (default 100)")
    p.add_argument("--classifier", metavar="PATH",
                   help=f"the classifier of scripts/train_classifier.py: its folder or checkpoint "
                        f"(default {DEFAULT_CLASSIFIER_DIR}, skipped with a note when missing)")
    p.add_argument("--out", help="where to write the results (default: RUN_DIR/eval.json)")
    return p.parse_args(argv)


def print_table(result):
    print(f"run {result['run']} (iteration {result['iteration']}, model {result['model']}): "
          f"{result['n_generated']} generated vs {result['n_real']} real images ({result['split']} split)")
    swd = "  ".join(f"{k[4:]}: {v:.3f}" for k, v in result.items() if k.startswith("swd_"))
    print(f"SWD x 1e3  {swd}")
    if "classifier_fd" in result:
        print(f"classifier-feature Frechet distance (npsn classifier, not Inception FID): {result['classifier_fd']:.4f} "
              f"(the classifier's accuracy on these real images: {result['real_accuracy']:.4f})")
    if result.get("gan_test_per_class") is not None:
        names = result["class_names"]
        accuracies = "  ".join(f"{name}: {'n/a' if a is None else f'{a:.3f}'}"
                               for name, a in zip(names, result["gan_test_per_class"]))
        print(f"GAN-test accuracy (classifier on generated images of each intended class): {accuracies}")
        print(f"GAN-test mean {result['gan_test_mean']:.4f} (to compare with the accuracy on real images above)")
    bound = result["lipschitz_upper_bound"]
    print(f"||grad_x D(x)||: max {result['grad_norm_max']:.4f}, mean {result['grad_norm_mean']:.4f} "
          f"(max is a lower bound of Lip(D)); product of operator norms (upper bound): "
          + ("n/a (not a plain chain of layers)" if bound is None else f"{bound:.4f}"))
    header = f"{'layer':<12} {'kind':<16} {'input (HWC)':<14} {'sigma_power':>12} {'sigma_svd':>10} " \
             f"{'sigma(W_SN)':>12} {'op. norm':>9}"
    print(header)
    print("-" * len(header))
    for row in result["spectral"]:
        shape = "x".join(str(s) for s in row["input_shape"])
        print(f"{row['layer']:<12} {row['kind']:<16} {shape:<14} {row['sigma_power']:>12.4f} {row['sigma_svd']:>10.4f} "
              f"{row['sigma_normalized_svd']:>12.4f} {row['operator_norm']:>9.4f}")


def step(what):
    """One progress line on stderr as a step starts (stdout keeps the table)."""
    say(f"evaluate: {what} ...", file=sys.stderr)


def check_out(path):
    """An error message when the results cannot be written to ``path``, else None (checked before computing)."""
    if os.path.isdir(path):
        return f"--out {path} is a folder; give a file name (e.g. {os.path.join(path, 'eval.json')})"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--out {path}: the folder {folder} does not exist; create it or choose another --out"
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"--out {path}: not writable"
    return None


def main(argv=None):
    args = parse_args(argv)
    for name in ("n", "power_iterations"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    try:
        environment_threads()
        find_checkpoint(args.run_dir)
        backend.check_device(args.device)  # before loading any data
        config, G, D, meta = load_run(args.run_dir, args.device)
        classifier = None
        if args.classifier is not None or os.path.exists(classifier_checkpoint_path(DEFAULT_CLASSIFIER_DIR)):
            classifier, _ = load_classifier(args.classifier or DEFAULT_CLASSIFIER_DIR, args.device)
            if num_classes(G) and classifier.num_classes != num_classes(G):
                raise RunError(f"the run has {num_classes(G)} classes but the classifier {classifier.num_classes}: "
                               f"GAN-test needs a classifier of the run's classes (--classifier PATH)")
        out = args.out or os.path.join(args.run_dir if os.path.isdir(args.run_dir) else os.path.dirname(args.run_dir),
                                       "eval.json")
        problem = check_out(out)
        if problem:
            raise RunError(problem)
        images, labels = load_cifar10(args.data, args.split)
    except (RunError, backend.DeviceError, CIFAR10Error, ClassifierError, ThreadsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.n > len(images):
        print(f"error: --n {args.n} is more than the {len(images)} images of the {args.split} split; give --n "
              f"{len(images)} or less" + (" (or --split train)" if args.split == "test" else ""), file=sys.stderr)
        return 2
    xp = backend.xp_for(args.device)
    real_uint8 = xp.asarray(real_subset(images, args.n, args.seed))
    real_labels = xp.asarray(real_subset(labels.astype(np.int32), args.n, args.seed))  # the same draw: the same images
    k = num_classes(G)
    fake_labels = cycle_labels(args.n, k, xp) if k else None
    z = backend.to_device(
        sample_latent(np.random.default_rng([args.seed, 5]), args.n, config["z_dim"], config.get("z_dist", "normal")),
        args.device)
    step(f"generating {args.n} images (G of iteration {meta['iteration']}, eval mode)")
    fake = generate(G, z, labels=fake_labels, progress=True)
    D.eval()
    first = (pixels_to_unit(real_uint8[:GRADIENT_BATCH], xp),) + ((real_labels[:GRADIENT_BATCH],) if k else ())
    D(*first)  # records every layer's input shape; no u, v update
    result = {"run": args.run_dir, "iteration": meta["iteration"], "model": config["model"],
              "n_generated": int(fake.shape[0]), "n_real": int(real_uint8.shape[0]), "split": args.split,
              "seed": args.seed}
    if k:
        result["class_names"] = class_names(meta, k)
    step(f"SWD of {args.n} generated vs {args.n} real images, D's spectral diagnostics ({args.power_iterations} "
         f"power iterations per layer) and gradient norms")
    result.update(diagnose(D, real_uint8, fake, swd_seed=args.seed, power_iterations=args.power_iterations,
                           real_labels=real_labels if k else None, fake_labels=fake_labels))
    if classifier is not None:
        step(f"the classifier's features and predictions of the {args.n} real and {args.n} generated images")
        result["classifier"] = os.path.abspath(classifier_checkpoint_path(args.classifier or DEFAULT_CLASSIFIER_DIR))
        result.update(class_aware_measures(classifier, real_uint8, unit_to_pixels(fake), fake_labels, real_labels))
    print_table(result)
    if classifier is None:
        print(f"note: no classifier at {DEFAULT_CLASSIFIER_DIR}, so no classifier-feature Frechet distance"
              + (" or GAN-test accuracy" if k else "") + f"; {HOW_TO_TRAIN}")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
