"""The one pixel <-> ``[-1, 1]`` mapping: how uint8 images become GAN inputs, and GAN outputs become pixels.

A pixel value p in 0..255 is the float x = p / 127.5 - 1 in [-1, 1] (0 -> -1, 255 -> 1, both
exactly). The inverse rounds to the nearest pixel and clips: p = clip(rint((x + 1) * 127.5), 0, 255),
with ``rint``'s round-half-to-even. Every pixel survives the round trip:
``unit_to_pixels(pixels_to_unit(p, xp)) == p``.

:func:`pixels_to_dequantized` is sngan_projection's training mapping (``datasets/cifar10.py``:
``x = p / 128 - 1`` plus U(0, 1/128) noise per value), used by the ``sngan-projection-resnet`` preset.

The real images go through :func:`pixels_to_unit` (training batches, the evaluation's real
images); generated images go through :func:`unit_to_pixels` (PNG grids, SWD, ``.npz`` samples).
"""
import numpy as np

from npsn.backend import get_array_module


def pixels_to_unit(images_uint8, xp, dtype=np.float32):
    """uint8 pixels -> floats in ``[-1, 1]`` on the device of module ``xp``: ``x = p / 127.5 - 1``.

    Args:
        images_uint8: ``uint8`` array of any shape (NumPy or CuPy), values 0..255; NCHW ``(N, 3, 32, 32)``
            for CIFAR-10.
        xp: ``numpy`` or ``cupy``: the result is an array of this module.
        dtype: floating dtype of the result.

    Returns:
        ``p / 127.5 - 1`` with the input's shape and ``dtype``: 0 maps to exactly -1, 255 to
        exactly 1 (division by 127.5 is exact for these endpoints).

    Memory: the uint8 images go to the device first (1 byte per value: 150 MB for the
    training split; no copy when they are already there) and are converted there into one
    ``dtype`` array (600 MB in float32 for the training split) with in-place arithmetic, so
    for ``xp = cupy`` no float copy is ever made on the host, and for either module the
    only float array allocated is the result.
    """
    if images_uint8.dtype != np.uint8:
        raise TypeError(f"pixels_to_unit expects uint8 images, got {images_uint8.dtype}")
    x = xp.asarray(images_uint8).astype(dtype)
    # x <- p / 127.5 - 1
    x /= 127.5
    x -= 1
    return x


def unit_to_pixels(images):
    """Floats in ``[-1, 1]`` -> uint8 pixels, same shape and device: ``p = clip(rint((x + 1) * 127.5), 0, 255)``.

    The arithmetic runs in the input's dtype (float32 for G's outputs). These are the pixel
    values a saved PNG holds; SWD compares them with the real uint8 images.
    """
    xp = get_array_module(images)
    # p = clip(rint((x + 1) * 127.5), 0, 255)
    return xp.clip(xp.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)


def pixels_to_dequantized(images_uint8, rng, xp, dtype=np.float32):
    """uint8 pixels -> ``p / 128 - 1 + u`` with u ~ U(0, 1/128) per value, on the device of ``xp``.

    sngan_projection's ``CIFAR10Dataset.get_example`` (datasets/cifar10.py):
    ``image = np.asarray(x / 128. - 1., np.float32); image += np.random.uniform(size=image.shape,
    low=0., high=1. / 128)``. Each pixel value's interval [p/128 - 1, (p+1)/128 - 1) is filled
    uniformly, so the values lie in [-1, 1).

    Args:
        images_uint8: ``uint8`` array (N, 3, 32, 32) (NumPy or CuPy).
        rng: a NumPy ``Generator`` on the host: the noise is drawn there (float32, the same on CPU
            and GPU) so that a checkpoint of its state resumes the stream exactly.
        xp: ``numpy`` or ``cupy``.
    """
    if images_uint8.dtype != np.uint8:
        raise TypeError(f"pixels_to_dequantized expects uint8 images, got {images_uint8.dtype}")
    noise = rng.random(tuple(images_uint8.shape), dtype=np.float32)
    x = xp.asarray(images_uint8).astype(dtype)
    # x <- p / 128 - 1 + u,  u = U(0, 1) / 128
    x /= 128
    x -= 1
    noise /= 128
    x += xp.asarray(noise.astype(dtype, copy=False))
    return x
