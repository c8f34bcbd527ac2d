"""im2col and col2im: the data-movement kernels behind every convolution.

``im2col`` gathers, for every output pixel, the kh x kw x C input patch it sees, as one row
of a matrix (one copy of a strided view); ``col2im`` is its exact adjoint: it scatters (adds)
each row's patch back into the image, looping over the kh * kw kernel offsets only.
Both split the batch between host threads on NumPy (:func:`npsn.utils.threads.parallel_chunks`):
here speed is the point, so the plumbing stays visible.
"""
from npsn.backend import get_array_module
from npsn.utils.threads import parallel_chunks


def conv_output_size(size, kernel, stride, padding):
    """Output length of a convolution along one axis: floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def valid_range(out_size, in_size, offset, stride, padding):
    """The output positions whose tap at kernel ``offset`` reads inside the (unpadded) input, along one axis.

    Output position i reads input position r = stride * i + offset - padding. Returns
    ``(i0, i1, r0)``: exactly the i in [i0, i1) have 0 <= r < in_size, and r0 is the first such r.
    The other output positions fall on the zero padding (col2im drops them).
    """
    # smallest i with r >= 0 (ceil division), and one past the largest i with r <= in_size - 1
    i0 = max(0, -((offset - padding) // stride))
    i1 = max(i0, min(out_size, (in_size - 1 + padding - offset) // stride + 1))
    return i0, i1, stride * i0 + offset - padding


def im2col(x, kh, kw, stride, padding):
    """Patches of a channels-last image batch.

    Args:
        x: (N, H, W, C).
    Returns:
        cols: (N, Ho, Wo, kh, kw, C), C-contiguous, with cols[n, i, j, a, b, c] = x_pad[n, s*i + a, s*j + b, c],
        where x_pad is x zero-padded by ``padding`` on both sides of H and W.

    The patches are first a strided *view* of x_pad (every window shares x_pad's memory), then
    one copy writes them out in order: sequential writes, measured 2-3 times faster than one
    strided copy per kernel offset. Padding and copy are split over the images between host
    threads (:func:`npsn.utils.threads.parallel_chunks`).
    """
    xp = get_array_module(x)
    n, h, w, c = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    p = padding
    x_pad = xp.empty((n, h + 2 * p, w + 2 * p, c), dtype=x.dtype) if p else x
    cols = xp.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    sn, sh, sw, sc = x_pad.strides
    # windows[n, i, j, a, b, c] = x_pad[n, s*i + a, s*j + b, c]  (a view: no data is copied yet)
    windows = xp.lib.stride_tricks.as_strided(
        x_pad, shape=(n, ho, wo, kh, kw, c), strides=(sn, stride * sh, stride * sw, sh, sw, sc))

    def work(start, stop):  # images [start, stop): pad them, then copy their windows out in order
        if p:
            x_pad[start:stop] = 0
            x_pad[start:stop, p:p + h, p:p + w] = x[start:stop]
        cols[start:stop] = windows[start:stop]

    parallel_chunks(x, work)
    return cols


def col2im(cols, height, width, stride, padding):
    """The adjoint of :func:`im2col`: add every patch back at the place it was taken from.

    Args:
        cols: (N, Ho, Wo, kh, kw, C).
        height, width: H and W of the image im2col read (not derivable when stride > 1).
    Returns:
        x: (N, H, W, C), C-contiguous, with x[n, y, z, c] = sum of cols[n, i, j, a, b, c] over all
        (i, j, a, b) with s*i + a - padding = y and s*j + b - padding = z (taps on the padding are dropped).

    Each output element receives its taps in the order of (a, b), row-major, starting from 0, in both
    forms below (so they give the same bits). With stride 1 the kh * kw taps are added one by one,
    each a strided slice addition over the valid output positions. With stride s > 1 the taps are
    grouped by phase: write a = s alpha + r (0 <= r < s); in the padded image seen as a lattice
    (N, Hp/s, s, Wp/s, s, C), tap (a, b) of output position (i, j) lands on cell (i + alpha, r, j + beta, t),
    so the s * s taps of one (alpha, beta) are one slice addition: ceil(kh/s) * ceil(kw/s) additions
    (4 instead of 16 for a 4x4 stride-2 kernel), then one copy of the unpadded part. Images are
    independent, so they are split between host threads (:func:`npsn.utils.threads.parallel_chunks`).
    """
    if stride > 1:
        return _col2im_by_phase(cols, height, width, stride, padding)
    xp = get_array_module(cols)
    n, ho, wo, kh, kw, c = cols.shape
    x = xp.empty((n, height, width, c), dtype=cols.dtype)

    def work(start, stop):  # images [start, stop)
        x[start:stop] = 0
        for a in range(kh):
            i0, i1, r0 = valid_range(ho, height, a, stride, padding)
            for b in range(kw):
                j0, j1, q0 = valid_range(wo, width, b, stride, padding)
                # x[n, s*i + a - p, s*j + b - p, :] += cols[n, i, j, a, b, :]   (in place, through a view)
                target = x[start:stop, r0:r0 + stride * (i1 - i0):stride, q0:q0 + stride * (j1 - j0):stride]
                target += cols[start:stop, i0:i1, j0:j1, a, b]

    parallel_chunks(cols, work)
    return x


def _col2im_by_phase(cols, height, width, s, p):
    """:func:`col2im` for stride s > 1: one slice addition per (alpha, beta), in a zero-padded lattice."""
    xp = get_array_module(cols)
    n, ho, wo, kh, kw, c = cols.shape
    taps_h, taps_w = -(-kh // s), -(-kw // s)  # ceil(k / s): the alphas and the betas
    # the padded image covers every tap and the whole image, in whole lattice cells
    hp = s * max(ho + taps_h - 1, -(-(height + p) // s))
    wp = s * max(wo + taps_w - 1, -(-(width + p) // s))
    x_pad = xp.empty((n, hp, wp, c), dtype=cols.dtype)
    # lattice[n, q, r, u, t, c] = x_pad[n, s*q + r, s*u + t, c]   (a view)
    lattice = x_pad.reshape(n, hp // s, s, wp // s, s, c)
    x = xp.empty((n, height, width, c), dtype=cols.dtype)

    def work(start, stop):  # images [start, stop)
        x_pad[start:stop] = 0
        for alpha in range(taps_h):
            rh = min(s, kh - s * alpha)  # the phases r of alpha's taps a = s alpha + r < kh
            for beta in range(taps_w):
                rw = min(s, kw - s * beta)
                # x_pad[n, s*(i + alpha) + r, s*(j + beta) + t, :] += cols[n, i, j, s*alpha + r, s*beta + t, :]
                target = lattice[start:stop, alpha:alpha + ho, :rh, beta:beta + wo, :rw]
                target += cols[start:stop, :, :, s * alpha:s * alpha + rh, s * beta:s * beta + rw].transpose(
                    0, 1, 3, 2, 4, 5)
        # x = x_pad without the padding
        x[start:stop] = x_pad[start:stop, p:p + height, p:p + width]

    parallel_chunks(cols, work)
    return x
