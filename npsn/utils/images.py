"""Image grids as PNG files (Pillow): plain grids, and per-class grids with the class names beside the rows."""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from npsn.backend import to_numpy
from npsn.data.pixels import unit_to_pixels

LABEL_MARGIN = 4  # pixels of black left and right of a class name


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


def _text_box(font, text):
    """(width, height) of ``text`` in ``font`` (getbbox: Pillow >= 9.2; getsize before)."""
    if hasattr(font, "getbbox"):
        left, _, right, bottom = font.getbbox(text)
        return right - left, bottom
    return font.getsize(text)


def labelled_rows(grid, row_names, row_height, padding=2):
    """``grid`` (H, W, 3) uint8 with a black margin on its left holding ``row_names[r]`` beside row r.

    Args:
        grid: a :func:`make_grid` image whose rows are ``row_height`` pixels apart after ``padding``.
        row_names: one string per grid row.
    Returns:
        (H, W + margin, 3) uint8; the margin fits the longest name in Pillow's default font
        (``ImageFont.load_default()``), each name white and vertically centred on its row.
    """
    font = ImageFont.load_default()
    boxes = [_text_box(font, name) for name in row_names]
    margin = max(w for w, _ in boxes) + 2 * LABEL_MARGIN
    canvas = Image.new("RGB", (margin + grid.shape[1], grid.shape[0]))
    canvas.paste(Image.fromarray(grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (name, (_, h)) in enumerate(zip(row_names, boxes)):
        top = padding + r * (row_height + padding) + (row_height - h) // 2
        draw.text((LABEL_MARGIN, top), name, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def save_class_grid(images, path, class_names, padding=2):
    """Save a per-class grid: row k holds the images of class k, its name written left of the row.

    Args:
        images: (K * m, C, H, W) floats in [-1, 1] (either device), ordered row by row: images
            ``k*m .. k*m + m - 1`` are of class k (the trainer's and ``scripts/sample.py --grid``'s order).
        path: the PNG to write.
        class_names: K names, ``class_names[k]`` for row k.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> save_class_grid(np.zeros((6, 3, 32, 32), np.float32), path, ["cat", "dog"])
    >>> Image.open(path).size[1]  # 2 rows of 32 pixels and 3 paddings of 2
    70
    """
    k = len(class_names)
    if k == 0 or images.shape[0] % k:
        raise ValueError(f"{images.shape[0]} images do not make {k} equal rows")
    pixels = to_uint8(images)
    grid = make_grid(pixels, nrow=images.shape[0] // k, padding=padding)
    Image.fromarray(labelled_rows(grid, class_names, pixels.shape[1], padding)).save(path)
