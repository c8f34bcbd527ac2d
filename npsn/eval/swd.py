"""Sliced Wasserstein Distance (SWD) between two sets of images, as in ProGAN (Karras et al., 2018).

Karras, Aila, Laine, Lehtinen, "Progressive Growing of GANs for Improved Quality, Stability, and
Variation", ICLR 2018, Sec. 5 and Appendix D; the reference is ProGAN's ``metrics/sliced_wasserstein.py``.
This is an independent re-implementation that runs on NumPy or CuPy (the array module is learned from
the input images) and needs no SciPy.

The algorithm, for two sets of images A and B:

1. Build a Laplacian pyramid of every image (5x5 binomial filter, reflect borders), with one level per
   resolution H, H/2, ... down to ``min_resolution``: every level but the last is a band-pass
   "detail" level, the last is the low-pass Gaussian level of that resolution (as in ProGAN, which
   builds exactly as many levels as it reports). For 32x32 images: level 32 = detail, level 16 = Gaussian.
2. At each level, cut ``patches_per_image`` random 7x7 patches out of every image; a patch of C
   channels is a descriptor of C*7*7 values.
3. Normalize the descriptors of each set and level on their own: subtract the per-channel mean and
   divide by the per-channel standard deviation (over all descriptors and the 7x7 positions).
4. Project both descriptor sets on ``n_repeats x n_directions`` random unit vectors; along each
   direction the 1-D Wasserstein-1 distance between the two empirical distributions is the mean of
   ``|sorted_a - sorted_b|``; average over directions (and repeats). Report x 1e3 per level and
   the mean over levels.

Randomness (patch positions, directions) is drawn on the host from ``numpy.random.default_rng(seed)``
and moved to the device, so NumPy and CuPy pick the same patches and directions. Image i of either
set gets the same patch positions (common random numbers), so a set against itself gives exactly 0.

Memory: descriptors are float32. For N images per set they take ``N * patches_per_image * C * 49 * 4``
bytes per set: about 0.75 GB per set for 10,000 CIFAR-10 images (1.5 GB for both). Levels are processed
one at a time and projections in chunks of at most ``_MAX_PROJECTION_FLOATS`` floats, so the peak is
about 2 GB for 10k images per set (measured: 0.63 GB for 2,000 per set; unequal set sizes add the
gathers of the quantile coupling, ~1.5x). Use fewer images (2,000-5,000) where that is too much; on
two CPU cores 2,000 images per set take about 10 s.
"""
import numpy as np

from npsn.backend import device_of, get_array_module, to_numpy
from npsn.data.pixels import pixels_to_unit

# The 5-tap binomial filter [1, 4, 6, 4, 1] / 16; its outer product with itself is ProGAN's 5x5
# Gaussian filter ([1,4,6,4,1]^T [1,4,6,4,1] / 256), so the 2-D blur is two 1-D passes.
BINOMIAL_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)

# At most this many floats in one (directions x descriptors) projection array (128 MB of float32).
_MAX_PROJECTION_FLOATS = 2**25


def binomial_filter_2d():
    """The 5x5 binomial filter as a float64 NumPy array: outer([1,4,6,4,1], [1,4,6,4,1]) / 256; sums to 1."""
    taps = np.array(BINOMIAL_TAPS)
    return np.outer(taps, taps)


def _blur_axis(x, axis, gain=1.0, step=1):
    r"""Convolve ``x`` along one axis with ``gain`` x the 5-tap binomial filter, reflect borders,
    keeping every ``step``-th output (``step=2`` blurs and downsamples in one pass).

    Shapes: x (..., n, ...) -> (..., ceil(n / step), ...) along ``axis``; dtype is kept.
    Border: "reflect" about the edge sample without repeating it (d c b | a b c d | c b a), which is
    scipy.ndimage's ``mode="mirror"`` used by ProGAN and OpenCV's BORDER_REFLECT_101 used by cv2.pyrDown.

    .. math:: y[i] = \mathrm{gain} \sum_{k=-2}^{2} t_k \, x[\mathrm{step} \cdot i + k]
    """
    xp = get_array_module(x)
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    padded = xp.pad(x, pad, mode="reflect")
    out = None
    for k, tap in enumerate(BINOMIAL_TAPS):
        # padded[k + step*i] is x[step*i + k - 2]
        index = [slice(None)] * x.ndim
        index[axis] = slice(k, k + n, step)
        term = (gain * tap) * padded[tuple(index)]
        out = term if out is None else out + term
    return out


def pyr_down(images):
    r"""Blur with the 5x5 binomial filter and keep every second row and column (ProGAN's ``pyr_down``, cv2.pyrDown).

    Shapes: images (N, C, H, W) -> (N, C, H/2, W/2) for even H, W.

    .. math:: G_{l+1}[i, j] = \sum_{a, b = -2}^{2} g_a g_b \, G_l[2i + a, 2j + b]
    """
    return _blur_axis(_blur_axis(images, axis=2, step=2), axis=3, step=2)


def pyr_up(images):
    """Insert zeros between samples and blur with 4 x the 5x5 binomial filter (ProGAN's ``pyr_up``).

    Shapes: images (N, C, H, W) -> (N, C, 2H, 2W). The gain 4 (2 per axis) keeps a constant image
    constant: every output sample sees taps of total weight 1/4 on the non-zero (even) positions.
    """
    xp = get_array_module(images)
    n, c, h, w = images.shape
    # u[2i, 2j] = x[i, j], zero elsewhere
    upsampled = xp.zeros((n, c, 2 * h, 2 * w), dtype=images.dtype)
    upsampled[:, :, ::2, ::2] = images
    return _blur_axis(_blur_axis(upsampled, axis=2, gain=2.0), axis=3, gain=2.0)


def laplacian_pyramid(images, num_levels):
    r"""The Laplacian pyramid of a batch of images, finest level first (ProGAN's ``generate_laplacian_pyramid``).

    Input: images (N, C, H, W) float, H and W divisible by 2^(num_levels - 1).
    Output: a list of ``num_levels`` arrays; level l has shape (N, C, H/2^l, W/2^l).

    .. math::
        G_0 = x, \quad G_{l+1} = \mathrm{down}(\mathrm{blur}(G_l)), \quad
        L_l = G_l - \mathrm{up}(G_{l+1}) \ (l < \mathrm{num\_levels} - 1), \quad
        L_{\mathrm{last}} = G_{\mathrm{last}}
    """
    gaussian = images
    pyramid = []
    for _ in range(num_levels - 1):
        coarser = pyr_down(gaussian)
        # L_l = G_l - up(G_{l+1})
        pyramid.append(gaussian - pyr_up(coarser))
        gaussian = coarser
    pyramid.append(gaussian)
    return pyramid


def reconstruct_laplacian_pyramid(pyramid):
    """Invert :func:`laplacian_pyramid`: G_l = L_l + up(G_{l+1}), from the coarsest level up; returns G_0 (N, C, H, W)."""
    image = pyramid[-1]
    for detail in pyramid[-2::-1]:
        # G_l = L_l + up(G_{l+1})
        image = detail + pyr_up(image)
    return image


def extract_patches(level, centers_y, centers_x, patch_size):
    r"""Cut one square patch per (image, center) pair out of a pyramid level, in a single gather.

    Inputs: level (N, C, S, S); centers_y, centers_x (N, P) integer arrays on level's device with
    values in [patch_size // 2, S - patch_size // 2), so every patch lies inside the image.
    Output: (N * P, C, patch_size, patch_size); row n * P + p is the patch of image n around center p.

    .. math:: d[nP + p, c, u, v] = \mathrm{level}[n, c, y_{np} + u - h, x_{np} + v - h], \quad h = \lfloor s/2 \rfloor
    """
    xp = get_array_module(level)
    n, c = level.shape[:2]
    half = patch_size // 2
    offsets = xp.arange(-half, half + 1)
    image_index = xp.repeat(xp.arange(n), centers_y.shape[1])[:, None, None, None]
    channel_index = xp.arange(c)[None, :, None, None]
    rows = centers_y.reshape(-1)[:, None, None, None] + offsets[None, None, :, None]
    cols = centers_x.reshape(-1)[:, None, None, None] + offsets[None, None, None, :]
    return level[image_index, channel_index, rows, cols]


def normalize_descriptors(descriptors):
    r"""Standardize descriptors per channel, in place (ProGAN's ``finalize_descriptors``), and flatten them.

    Input: descriptors (M, C, s, s) float. Output: (M, C*s*s), the same memory.
    Each channel c is shifted and scaled by its own mean and standard deviation over all M patches and
    s*s positions; a channel of zero variance is left at 0 instead of dividing by 0 (ProGAN would give NaN).

    .. math:: d[m, c, u, v] \leftarrow (d[m, c, u, v] - \mu_c) / \sigma_c
    """
    xp = get_array_module(descriptors)
    for c in range(descriptors.shape[1]):
        channel = descriptors[:, c]  # a view: one channel at a time keeps temporaries small
        mean = channel.mean()
        std = channel.std()
        channel -= mean
        # (d - mu_c) / sigma_c, with sigma_c = 0 -> 1
        channel /= xp.where(std > 0, std, xp.ones_like(std))
    return descriptors.reshape(descriptors.shape[0], -1)


def quantile_coupling(n, m):
    r"""The monotone (quantile) coupling of two equal-weight empirical distributions of n and m points.

    Outputs (NumPy, on the host): index_a (K,), index_b (K,) int64 and weight (K,) float64, with
    K <= n + m - 1 and sum(weight) == 1, such that for sorted samples a (n,) and b (m,)

    .. math:: W_1 = \int_0^1 |F_a^{-1}(t) - F_b^{-1}(t)| \, dt = \sum_k w_k |a[i_k] - b[j_k]|

    The quantile functions are constant between the breakpoints {i/n} and {j/m}; on the interval
    [t_k, t_{k+1}) they take a[floor(n t_k)] and b[floor(m t_k)]. Breakpoints are kept as exact
    integers on the scale n*m. For n == m this is index_a = index_b = arange(n), weight = 1/n, ProGAN's
    ``mean(|sort(a) - sort(b)|)``.
    """
    # t = T / (n m); breakpoints i/n -> T = i m and j/m -> T = j n
    breakpoints = np.union1d(np.arange(n + 1, dtype=np.int64) * m, np.arange(m + 1, dtype=np.int64) * n)
    starts = breakpoints[:-1]
    # floor(n t) = floor(T / m), floor(m t) = floor(T / n)
    index_a = starts // m
    index_b = starts // n
    weight = np.diff(breakpoints) / (n * m)
    return index_a, index_b, weight


def sliced_wasserstein_descriptors(desc_a, desc_b, directions, coupling=None):
    r"""Sum over directions of the 1-D Wasserstein-1 distance between the projected descriptor sets.

    Inputs: desc_a (n, D), desc_b (m, D) float32 on one device; directions (D, K) unit columns on that
    device; coupling: None when n == m, else (index_a, index_b, weight) of :func:`quantile_coupling`
    (n, m) moved to that device.
    Output: a 0-d array, the sum over the K directions (divide by K for ProGAN's ``sliced_wasserstein``
    of one repeat). Directions are processed in chunks so one projection array holds at most
    ``_MAX_PROJECTION_FLOATS`` floats; projections are sorted and subtracted in place.

    .. math:: \sum_{k=1}^K W_1(\{\theta_k^T a_i\}_i, \{\theta_k^T b_j\}_j), \quad
              W_1 = \frac{1}{n} \sum_i |a_{(i)} - b_{(i)}| \ \text{when } n = m
    """
    xp = get_array_module(desc_a)
    n_directions = directions.shape[1]
    chunk = max(1, min(n_directions, _MAX_PROJECTION_FLOATS // max(desc_a.shape[0], desc_b.shape[0])))
    total = xp.zeros((), dtype=desc_a.dtype)
    for start in range(0, n_directions, chunk):
        theta_t = directions[:, start : start + chunk].T
        # projections (k, n): row k holds theta_k^T a_i for all i, sorted in place
        sorted_a = theta_t @ desc_a.T
        sorted_a.sort(axis=1)
        sorted_b = theta_t @ desc_b.T
        sorted_b.sort(axis=1)
        if coupling is None:
            # W_1 along direction k: mean_i |a_(i) - b_(i)|  (ProGAN)
            sorted_a -= sorted_b
            distances = xp.abs(sorted_a, out=sorted_a).mean(axis=1)
        else:
            index_a, index_b, weight = coupling
            # W_1 along direction k: sum_q w_q |a_(i_q) - b_(j_q)|
            gaps = sorted_a[:, index_a]
            gaps -= sorted_b[:, index_b]
            distances = xp.abs(gaps, out=gaps) @ weight
        total = total + distances.sum()
    return total


def _as_float_images(images):
    """uint8 images in [0, 255] -> float32 in [-1, 1]; floating images -> float32 unchanged in value."""
    if images.dtype == np.uint8:
        return pixels_to_unit(images, get_array_module(images))
    if images.dtype.kind != "f":
        raise TypeError(f"images must be uint8 in [0, 255] or float in [-1, 1], got dtype {images.dtype}")
    return images.astype(np.float32, copy=False)


def pyramid_resolutions(size, min_resolution=16):
    """The reported resolutions for square images of side ``size``: size, size/2, ... while >= min_resolution."""
    resolutions = []
    while size >= min_resolution:
        resolutions.append(size)
        if size % 2:
            break
        size //= 2
    return resolutions


def sliced_wasserstein(
    images_a,
    images_b,
    seed=0,
    patches_per_image=128,
    patch_size=7,
    n_directions=128,
    n_repeats=4,
    min_resolution=16,
):
    r"""Sliced Wasserstein Distance x 1e3 between two sets of images, per pyramid level and averaged (ProGAN, App. D).

    Inputs: images_a (N_a, C, S, S) and images_b (N_b, C, S, S), both NumPy or both CuPy (the work runs
    where they live), NCHW (npsn's layers are channels-last: pass ``x.transpose(0, 3, 1, 2)``), either
    uint8 in [0, 255] or float in [-1, 1] (uint8 is converted to float32 x / 127.5 - 1).
    N_a and N_b may differ: the 1-D distances then use the exact quantile coupling of
    :func:`quantile_coupling`, which is ProGAN's ``mean(|sort(a) - sort(b)|)`` when they are equal.
    Output: ``{"swd_<res>": float, ..., "swd_mean": float}`` for res = S, S/2, ... >= min_resolution
    (for S = 32: ``swd_32``, ``swd_16``, ``swd_mean``), all x 1e3, as Python floats (one host transfer).

    Per level l with descriptor sets a = {a_i}, b = {b_j} (normalized per set and channel) and
    R = n_repeats x n_directions random unit directions theta:

    .. math:: \mathrm{SWD}_l = \frac{10^3}{R} \sum_{r=1}^{R}
              \int_0^1 |F^{-1}_{\theta_r^T a}(t) - F^{-1}_{\theta_r^T b}(t)| \, dt

    Random draws, from ``numpy.random.default_rng(seed)`` in this order, per level from fine to coarse:
    patch rows (max(N_a, N_b), P), patch columns (max(N_a, N_b), P) -- image i of either set uses row i,
    so SWD(x, x) == 0 exactly -- then n_repeats direction matrices (C*patch_size^2, n_directions).
    Since each set is standardized by its own per-channel statistics, SWD ignores a per-channel affine
    change of either set (brightness/contrast); it measures the shape of the patch distributions.
    """
    xp = get_array_module(images_a, images_b)
    if device_of(images_a) != device_of(images_b):
        raise ValueError("images_a and images_b must be on the same device (both NumPy or both CuPy)")
    if images_a.ndim != 4 or images_b.ndim != 4 or images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(
            f"need two NCHW batches with the same (C, H, W), got {images_a.shape} and {images_b.shape}"
        )
    n_a, channels, height, width = images_a.shape
    n_b = images_b.shape[0]
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    if n_a < 1 or n_b < 1:
        raise ValueError("both image sets must be non-empty")
    resolutions = pyramid_resolutions(height, min_resolution)
    if not resolutions or height % 2 ** (len(resolutions) - 1) or resolutions[-1] < patch_size:
        raise ValueError(
            f"images of side {height} cannot give pyramid levels >= {min_resolution} that hold "
            f"{patch_size}x{patch_size} patches"
        )

    rng = np.random.default_rng(seed)
    pyramid_a = laplacian_pyramid(_as_float_images(images_a), len(resolutions))
    pyramid_b = laplacian_pyramid(_as_float_images(images_b), len(resolutions))
    coupling = None  # equal set sizes: compare sorted projections rank by rank
    if n_a != n_b:
        index_a, index_b, weight = quantile_coupling(n_a * patches_per_image, n_b * patches_per_image)
        coupling = (xp.asarray(index_a), xp.asarray(index_b), xp.asarray(weight.astype(np.float32)))
    half = patch_size // 2
    descriptor_size = channels * patch_size * patch_size
    n_max = max(n_a, n_b)

    per_level = []
    for level, resolution in enumerate(resolutions):
        rows = xp.asarray(rng.integers(half, resolution - half, size=(n_max, patches_per_image)))
        cols = xp.asarray(rng.integers(half, resolution - half, size=(n_max, patches_per_image)))
        desc_a = normalize_descriptors(extract_patches(pyramid_a[level], rows[:n_a], cols[:n_a], patch_size))
        desc_b = normalize_descriptors(extract_patches(pyramid_b[level], rows[:n_b], cols[:n_b], patch_size))
        total = xp.zeros((), dtype=xp.float32)
        for _ in range(n_repeats):
            directions = rng.standard_normal((descriptor_size, n_directions))
            # theta_k <- theta_k / ||theta_k||: unit directions in descriptor space
            directions /= np.sqrt(np.sum(directions**2, axis=0, keepdims=True))
            total = total + sliced_wasserstein_descriptors(
                desc_a, desc_b, xp.asarray(directions.astype(np.float32)), coupling
            )
        del desc_a, desc_b
        # SWD_l x 1e3 = 1e3 * mean over repeats and directions
        per_level.append(total * (1e3 / (n_repeats * n_directions)))

    values = [float(v) for v in to_numpy(xp.stack(per_level))]
    result = {f"swd_{res}": value for res, value in zip(resolutions, values)}
    result["swd_mean"] = float(np.mean(values))
    return result
