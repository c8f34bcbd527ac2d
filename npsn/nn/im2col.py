"""im2col and col2im: the data-movement kernels behind every convolution.

``im2col`` gathers, for every output pixel, the kh x kw x C input patch it sees, as one row
of a matrix (one copy of a strided view); ``col2im`` is its exact adjoint: it scatters (adds)
each row's patch back into the image, looping over the kh * kw kernel offsets only.
Both split the batch between host threads on NumPy (:func:`npsn.backend.threads.parallel_chunks`):
here speed is the point, so the plumbing stays visible.
"""
from npsn.backend import get_array_module
from npsn.backend.threads import parallel_chunks


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
    threads (:func:`npsn.backend.threads.parallel_chunks`).
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
        x: (N, H, W, C) with x[n, y, z, c] = sum of cols[n, i, j, a, b, c] over all (i, j, a, b)
        with s*i + a - padding = y and s*j + b - padding = z (taps on the padding are dropped).

    Each output element receives its taps in the order of (a, b), row-major, starting from 0, in both
    forms below (so they give the same bits). In general the kh * kw taps are added one by one, each a
    strided slice addition over the valid output positions. With stride s > 1 dividing H and W, taps
    are grouped instead: tap a of output row i lands on row y = s*i + a - p = s*(i + alpha) + r with
    alpha = floor((a - p) / s), r = (a - p) mod s, so in x seen as a lattice (N, H/s, s, W/s, s, C) the
    consecutive taps a that share alpha land on cells (i + alpha, r) of one slice: one addition per
    (alpha, beta) pair, 9 instead of 16 for a 4x4 stride-2 kernel with padding 1 (and larger, more
    contiguous slices: faster on a CPU too). Images are independent, so they are split between host
    threads (:func:`npsn.backend.threads.parallel_chunks`).
    """
    xp = get_array_module(cols)
    n, ho, wo, kh, kw, c = cols.shape
    s = stride
    x = xp.empty((n, height, width, c), dtype=cols.dtype)
    if s > 1 and height % s == 0 and width % s == 0:
        # lattice[n, q, r, u, t, c] = x[n, s*q + r, s*u + t, c]   (a view)
        lattice = x.reshape(n, height // s, s, width // s, s, c)
        row_groups = _tap_groups(kh, s, padding, ho, height // s)
        column_groups = _tap_groups(kw, s, padding, wo, width // s)

        def work(start, stop):  # images [start, stop)
            x[start:stop] = 0
            for a0, a1, r0, i0, i1, q0 in row_groups:
                for b0, b1, t0, j0, j1, u0 in column_groups:
                    # x[n, s*(i + alpha) + r, s*(j + beta) + t, :] += cols[n, i, j, a, b, :] for the group's taps
                    target = lattice[start:stop, q0:q0 + i1 - i0, r0:r0 + a1 - a0, u0:u0 + j1 - j0, t0:t0 + b1 - b0]
                    target += cols[start:stop, i0:i1, j0:j1, a0:a1, b0:b1].transpose(0, 1, 3, 2, 4, 5)
    else:
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


def _tap_groups(k, s, p, out_size, cells):
    """Along one axis, the runs of taps a in [0, k) that share alpha = floor((a - p) / s), for :func:`col2im`.

    Returns ``[(a0, a1, r0, i0, i1, q0), ...]``: taps [a0, a1) land on phases [r0, r0 + a1 - a0) of
    lattice cells q = i + alpha; exactly the output positions i in [i0, i1) land inside the image
    (0 <= q < cells), the first on cell q0. Runs that land nowhere are left out.
    """
    groups, a0 = [], 0
    while a0 < k:
        alpha = (a0 - p) // s
        a1 = a0
        while a1 < k and (a1 - p) // s == alpha:
            a1 += 1
        i0, i1 = max(0, -alpha), min(out_size, cells - alpha)
        if i1 > i0:
            groups.append((a0, a1, (a0 - p) % s, i0, i1, i0 + alpha))
        a0 = a1
    return groups
