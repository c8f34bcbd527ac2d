"""Image grids as PNG files (Pillow)."""
import numpy as np
from PIL import Image

from npsn.backend import to_numpy
from npsn.data.pixels import unit_to_pixels


def to_uint8(images):
    """NCHW floats in [-1, 1] (either device) -> NHWC uint8 on the host, by :func:`~npsn.data.pixels.unit_to_pixels`."""
    return to_numpy(unit_to_pixels(images)).transpose(0, 2, 3, 1)


def make_grid(images_uint8, nrow=8, padding=2):
    """Tile (N, H, W, 3) uint8 images into one (rows*(H+p)+p, nrow*(W+p)+p, 3) image, row by row, on a black background."""
    n, h, w, c = images_uint8.shape
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = images_uint8[i]
    return grid


def save_grid(images, path, nrow=8):
    """Save NCHW float images in [-1, 1] (either device) as one PNG grid with ``nrow`` images per row."""
    Image.fromarray(make_grid(to_uint8(images), nrow)).save(path)
