"""Evaluation of a GAN during and after training: SWD against real images and D's spectral diagnostics.

:func:`make_evaluator` builds the callable the :class:`~npsn.gan.trainer.Trainer` runs every
``eval_every`` iterations; its dict is merged into that iteration's log record. It must not change
anything training depends on: it draws z from its own generator (never ``trainer.noise``), runs G
and D in eval mode (no BatchNorm running-statistics update, no spectral-norm u, v update),
computes no parameter gradient, and restores both modes. A run with evaluation therefore has
exactly the losses of the same run without it, and resuming stays exact.

:func:`real_subset` picks the fixed real images both the in-training evaluator and
``scripts/evaluate.py`` compare with.

:func:`load_run` and :func:`generate` serve the command-line scripts (``scripts/evaluate.py``,
``scripts/sample.py``).
"""
import os
import time

import numpy as np

from npsn import backend
from npsn.data.cifar10 import CIFAR10_CLASSES
from npsn.data.pixels import pixels_to_unit, unit_to_pixels
from npsn.eval.spectral import (
    gradient_norm_estimate,
    lipschitz_upper_bound,
    spectral_report,
)
from npsn.eval.swd import sliced_wasserstein
from npsn.gan.checkpoint import load_checkpoint, load_modules
from npsn.gan.models import gan_from_config, sample_latent
from npsn.utils.console import one_line
from npsn.utils.progress import ProgressBar

GENERATION_CHUNK = 250  # images generated per forward of G
PROGRESS_ABOVE = 1000  # images: generating fewer takes a few seconds, with no progress line
GRADIENT_BATCH = 64  # real and generated images for the gradient-norm estimate


def num_classes(model):
    """K of a class-conditional model, 0 for an unconditional one."""
    return getattr(model, "num_classes", 0)


def cycle_labels(n, k, xp=np):
    """The classes 0, 1, ..., k-1, 0, 1, ... of n images: int32 (n,) (``arange(n) % k``; n = m*k gives m of each).

    >>> cycle_labels(5, 3)
    array([0, 1, 2, 0, 1], dtype=int32)
    """
    return (xp.arange(n) % k).astype(xp.int32)


def class_names(meta, k):
    """The k class names of a run: its checkpoint's ``meta["class_names"]``, else CIFAR-10's first k."""
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == k:
        return [str(name) for name in names]
    return list(CIFAR10_CLASSES[:k]) + [str(i) for i in range(len(CIFAR10_CLASSES), k)]


def generate(G, z, chunk=GENERATION_CHUNK, labels=None, progress=False):
    """G(z), or G(z, labels) for a class-conditional G, in eval mode, ``chunk`` rows at a time,
    restoring G's previous mode; with ``progress``, a progress line on stderr for more than
    ``PROGRESS_ABOVE`` images.

    Args:
        G: a generator mapping z (N, z_dim) (and classes (N,)) to NCHW images.
        z: (N, z_dim) on G's device, G's dtype.
        labels: for a conditional G, the class of each image, int32 (N,) on G's device; None
            there means :func:`cycle_labels` (image i of class i % K). Must be None for an
            unconditional G.
    Returns:
        images (N, C, H, W) on G's device.
    """
    xp = backend.get_array_module(z)
    k = num_classes(G)
    if labels is not None and not k:
        raise ValueError("labels given to an unconditional generator")
    if k and labels is None:
        labels = cycle_labels(z.shape[0], k, xp)
    n = z.shape[0]
    bar = ProgressBar(n) if progress and n > PROGRESS_ABOVE else None
    was_training = G.training
    G.eval()
    parts, t0 = [], time.perf_counter()
    try:
        for i in range(0, n, chunk):
            parts.append(G(z[i:i + chunk]) if not k else G(z[i:i + chunk], labels[i:i + chunk]))
            if bar:
                done = min(i + chunk, n)
                bar.update(done, done / max(time.perf_counter() - t0, 1e-9), force=done == n)
    finally:
        G.train(was_training)
        if bar:
            bar.close()
    return xp.concatenate(parts)


def real_subset(images, n, seed):
    """``min(n, len(images))`` distinct images chosen by ``numpy.random.default_rng(seed)``, in file order.

    Args:
        images: (N, ...) array (host or device).
        n: the number of images wanted; all of ``images`` (the same array) when ``n >= N``.
        seed: anything ``numpy.random.default_rng`` accepts (an int, or a list such as ``[seed, 4]``).
    Returns:
        ``images[sorted(rng.choice(N, n, replace=False))]``.
    """
    if n >= len(images):
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))]


def diagnose(D, real_uint8, fake, swd_seed=0, gradient_batch=GRADIENT_BATCH, power_iterations=100,
             real_labels=None, fake_labels=None):
    """SWD, D's spectral report and gradient norms for one set of real and generated images.

    SWD compares the generated images quantized to uint8 (:func:`~npsn.data.pixels.unit_to_pixels`:
    the pixels a saved PNG holds, as ProGAN does) with the real uint8 images; the gradient norms
    use the float images.

    Args:
        D: the discriminator; it must have run a forward (true during or after training, or run
            one first).
        real_uint8: (N, 3, H, W) uint8 real images on D's device.
        fake: (M, 3, H, W) generated float images in [-1, 1] on D's device.
        swd_seed: the seed of :func:`~npsn.eval.swd.sliced_wasserstein` (patches and directions).
        gradient_batch: images of each set used for :func:`~npsn.eval.spectral.gradient_norm_estimate`.
        power_iterations: steps of :func:`~npsn.eval.spectral.operator_norm` per layer.
        real_labels, fake_labels: for a class-conditional (projection) D, the classes of the real
            and the generated images, int32 on D's device (the gradient norms are of D(x, y) in x).
    Returns:
        a flat JSON-able dict: ``swd_32``, ``swd_16``, ``swd_mean`` (x 1e3), ``grad_norm_max``,
        ``grad_norm_mean`` (over ``gradient_batch`` real and ``gradient_batch`` generated images),
        ``lipschitz_upper_bound`` (product of operator norms, or None for a ResNet), and
        ``spectral``: one dict per spectral-normalized layer (see :func:`~npsn.eval.spectral.spectral_report`).
    """
    xp = backend.get_array_module(fake)
    result = dict(sliced_wasserstein(unit_to_pixels(fake), real_uint8, seed=swd_seed))
    report = spectral_report(D, n_iterations=power_iterations)
    real = pixels_to_unit(real_uint8[:gradient_batch], xp, dtype=fake.dtype)
    if num_classes(D):
        batches = [(real, real_labels[:gradient_batch]), (fake[:gradient_batch], fake_labels[:gradient_batch])]
    else:
        batches = [real, fake[:gradient_batch]]
    grads = gradient_norm_estimate(D, batches)
    result["grad_norm_max"] = grads["grad_norm_max"]
    result["grad_norm_mean"] = grads["grad_norm_mean"]
    result["lipschitz_upper_bound"] = lipschitz_upper_bound(D, report)
    result["spectral"] = report
    return result


def make_evaluator(config, images_uint8, labels=None):
    """The evaluation callable for a :class:`~npsn.gan.trainer.Trainer`: ``evaluator(trainer) -> dict``.

    Args:
        config: the run's :class:`~npsn.gan.trainer.TrainConfig` (``eval_images``, ``seed``, ``z_dim``, ``z_dist``, ``device``).
        images_uint8: the training images, uint8 (N, 3, 32, 32) NCHW on the host.
        labels: their classes (N,) on the host; needed for a conditional run (``num_classes`` > 0),
            whose generated images cycle through the classes (:func:`cycle_labels`).
    Returns:
        a function of the trainer returning :func:`diagnose`'s dict for images of trainer.G (eval mode) and trainer.D.

    Fixed once, so every evaluation of a run compares like with like:

    * real: ``real_subset(images_uint8, eval_images, [seed, 4])`` (:func:`real_subset`):
      ``min(eval_images, N)`` distinct training images, kept uint8 on the device;
    * z: ``eval_images`` latent vectors from ``numpy.random.default_rng([seed, 5])`` (the trainer
      uses streams [seed, 2] for training noise and [seed, 3] for its sample grids);
    * SWD's patches and directions: ``sliced_wasserstein(..., seed=seed)``.
    """
    xp = backend.xp_for(config.device)
    real_uint8 = xp.asarray(real_subset(images_uint8, config.eval_images, [config.seed, 4]))
    k = getattr(config, "num_classes", 0)
    real_labels = fake_labels = None
    if k:  # the same subset of the labels (real_subset draws the same indices for the same seed)
        real_labels = xp.asarray(real_subset(np.asarray(labels, np.int32), config.eval_images, [config.seed, 4]))
        fake_labels = cycle_labels(config.eval_images, k, xp)
    z = backend.to_device(
        sample_latent(np.random.default_rng([config.seed, 5]), config.eval_images, config.z_dim, config.z_dist),
        config.device)

    def evaluate(trainer):
        fake = generate(trainer.G, z, labels=fake_labels)
        return diagnose(trainer.D, real_uint8, fake, swd_seed=config.seed, real_labels=real_labels,
                        fake_labels=fake_labels)

    return evaluate


class RunError(Exception):
    """A run directory or checkpoint is missing or unreadable (the message says which and why)."""


def find_checkpoint(path):
    """``path`` itself if it is a file, else ``path/checkpoint.npz``; :class:`RunError` if missing."""
    if not os.path.exists(path):
        raise RunError(f"{path}: no such run directory or checkpoint")
    checkpoint = path if os.path.isfile(path) else os.path.join(path, "checkpoint.npz")
    if not os.path.isfile(checkpoint):
        raise RunError(f"{path}: no checkpoint.npz there (train first, or pass the checkpoint file)")
    return checkpoint


def load_run(path, device="cpu"):
    """G and D of a run, from its checkpoint, on ``device``.

    Args:
        path: a run directory (holding ``checkpoint.npz``) or a checkpoint file.
        device: "cpu" or "gpu" (check it with :func:`~npsn.backend.check_device` first).
    Returns:
        ``(config dict, G, D, meta)``. The configuration is the one stored in the checkpoint's
        metadata (it always matches the saved weights; ``config.json`` holds the same values).
    Raises:
        RunError: missing path, missing checkpoint, a checkpoint that cannot be read, or one whose
            arrays do not fit its configuration (the keys, shapes and dtypes ``--resume`` checks:
            :func:`~npsn.gan.checkpoint.load_modules`).
    """
    checkpoint = find_checkpoint(path)
    try:
        arrays, meta = load_checkpoint(checkpoint)
        config = meta["config"]
        G, D = gan_from_config(config)  # the run's architecture (model, widths, sn_mode, d_final_bias)
    except Exception as exc:  # zip, JSON or key errors from a truncated or foreign file
        raise RunError(f"{checkpoint}: cannot read the checkpoint ({type(exc).__name__}: {one_line(exc)})") from None
    try:
        load_modules(arrays, {"G": G, "D": D})
    except (KeyError, ValueError, TypeError) as exc:
        raise RunError(f"{checkpoint}: its arrays do not fit its configuration ({type(exc).__name__}: "
                       f"{one_line(exc)}); restore it from a copy") from None
    return config, G.to(device), D.to(device), meta
