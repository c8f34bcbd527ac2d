"""Where npsn's iteration time goes (``--breakdown``): matrix products, im2col/col2im copies, the rest."""
import statistics
import time

from npsn.nn import conv

KERNELS = ("gather_forward", "gather_backward", "scatter_forward", "scatter_backward")
COPIES = ("im2col", "col2im", "weight_rows", "weight_from_rows")


def time_breakdown(side, repeats, warmup):
    """Seconds per npsn iteration in three disjoint parts (medians over ``repeats`` after ``warmup``).

    * ``matrix_products``: inside the convolution kernels (:mod:`npsn.nn.conv`'s gather/scatter
      forward and backward) minus the copies below, i.e. the im2col/col2im matrix products
      (BLAS) and their free reshapes;
    * ``im2col_col2im``: :func:`~npsn.nn.im2col.im2col`, :func:`~npsn.nn.im2col.col2im` and the weight
      reshapes :func:`~npsn.nn.conv.weight_rows` / :func:`~npsn.nn.conv.weight_from_rows`;
    * ``other``: everything else (activations, BatchNorm, spectral normalization, Adam, losses,
      the dense layers, Python).

    Also ``iteration``, the whole. The kernels are wrapped (module attributes of
    :mod:`npsn.nn.conv`, restored afterwards) to read the clock around each call; the wrapping
    itself costs microseconds per call. On the GPU the clock is read only after
    ``side.synchronize()`` (before and after each call): kernels run asynchronously, and an
    unsynchronized clock would time their launches, not their work (the waits make the GPU
    breakdown's iteration slower than the plain benchmark's; on the CPU they are no-ops).
    """
    spent = {"kernels": 0.0, "copies": 0.0}
    originals = {}

    def wrap(name, bucket):
        function = originals[name] = getattr(conv, name)

        def timed(*args, **kwargs):
            side.synchronize()  # the work queued before this call is not this call's
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                side.synchronize()  # this call's kernels have finished
                spent[bucket] += time.perf_counter() - start

        setattr(conv, name, timed)

    for name in KERNELS:
        wrap(name, "kernels")
    for name in COPIES:
        wrap(name, "copies")
    parts = {"iteration": [], "matrix_products": [], "im2col_col2im": [], "other": []}
    try:
        for i in range(warmup + repeats):
            spent.update(kernels=0.0, copies=0.0)
            side.synchronize()
            start = time.perf_counter()
            side.iteration()
            side.synchronize()
            total = time.perf_counter() - start
            if i >= warmup:
                parts["iteration"].append(total)
                parts["matrix_products"].append(spent["kernels"] - spent["copies"])
                parts["im2col_col2im"].append(spent["copies"])
                parts["other"].append(total - spent["kernels"])
    finally:
        for name, function in originals.items():
            setattr(conv, name, function)
    return {part: statistics.median(values) for part, values in parts.items()}
