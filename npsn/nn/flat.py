"""Parameters in one flat buffer, so that an optimizer updates all of them in a few array operations.

PyTorch's "foreach"/"fused" optimizers apply one kernel to every parameter at once; here the same
is done by making each Parameter's ``.data`` a *view* into one flat array, and gathering the
gradients into one flat array with a single ``concatenate``: Adam is then one elementwise kernel
for the whole model (:mod:`npsn.optim`), whatever its number of layers.

The flat gradient (:meth:`FlatParameters.gather_grads`, exposed as ``optimizer.flat_gradient()``)
is also the one array a data-parallel run has to reduce across processes before the step.
"""
import math

from npsn import backend
from npsn.backend import get_array_module


class FlatParameters:
    r"""One flat array holding the values of a list of parameters, each ``.data`` a view of its slice.

    Args:
        params: a list of distinct :class:`~npsn.nn.module.Parameter` s of one dtype, on one device.

    **Invariant between calls.** ``data`` is a 1-D C-contiguous array of ``size`` elements and, for
    each i, ``params[i].data is views[i]``, the C-contiguous view ``data[offsets[i]:offsets[i+1]]``
    shaped as the parameter -- *unless the parameter has been rebound since*: ``Module.to``, a
    ``load_state_dict`` that changes device or dtype, or a user's ``p.data = ...`` put a new array
    there. Views are never rebound behind the owner's back: :meth:`adopt` (called by the optimizer
    before every step) finds a rebound parameter by identity and copies every parameter's current
    value into a fresh flat buffer (on the parameters' device, in their dtype), so a rebinding takes
    effect and is never lost. Writes *into* ``p.data`` (``p.data[...] = x``, an in-place update)
    keep the view and need nothing.

    >>> import numpy as np
    >>> from npsn.nn.module import Parameter
    >>> a, b = Parameter(np.ones((2, 3), np.float32)), Parameter(np.zeros(4, np.float32))
    >>> flat = FlatParameters([a, b])
    >>> flat.data.shape, a.data.base is flat.data
    ((10,), True)
    >>> a.grad, b.grad = np.full((2, 3), 2, np.float32), np.arange(4, dtype=np.float32)
    >>> flat.gather_grads()
    array([2., 2., 2., 2., 2., 2., 0., 1., 2., 3.], dtype=float32)
    """

    def __init__(self, params):
        self.params = list(params)
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("FlatParameters: a parameter appears twice")
        self.shapes = [tuple(p.data.shape) for p in self.params]
        sizes = [math.prod(shape) for shape in self.shapes]
        self.offsets = [0]
        for size in sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.size = self.offsets[-1]
        self.data, self.views = None, []
        self._build()

    @staticmethod
    def supports(params):
        """True when ``params`` can share one flat buffer: distinct, all of one dtype, on one device."""
        params = list(params)
        if not params or len({id(p) for p in params}) != len(params):
            return False
        return (len({p.data.dtype for p in params}) == 1
                and len({backend.device_of(p.data) for p in params}) == 1)

    def _build(self):
        """Copy every parameter's current value into a new flat buffer and rebind ``.data`` to its views."""
        first = self.params[0].data
        xp = get_array_module(first)
        data = xp.empty(self.size, dtype=first.dtype)
        views = []
        for p, shape, start, stop in zip(self.params, self.shapes, self.offsets, self.offsets[1:]):
            view = data[start:stop].reshape(shape)
            view[...] = p.data
            views.append(view)
        for p, view in zip(self.params, views):
            p.data = view
        self.data, self.views = data, views

    def adopt(self):
        """Restore the invariant after any rebinding of a parameter's ``.data``; True when the buffer was rebuilt.

        Raises ValueError when a parameter was rebound to an array of another shape, or when the
        parameters no longer share one dtype and device.
        """
        if all(p.data is view for p, view in zip(self.params, self.views)):
            return False
        for i, (p, shape) in enumerate(zip(self.params, self.shapes)):
            if tuple(p.data.shape) != shape:
                raise ValueError(f"parameter {i} was rebound to shape {tuple(p.data.shape)}, expected {shape}")
        if not self.supports(self.params):
            raise ValueError("the parameters no longer share one dtype and device")
        self._build()
        return True

    def gather_grads(self):
        """Every parameter's ``.grad``, flattened and concatenated in parameter order (one new array).

        Every ``.grad`` must be set (an array of its parameter's shape).
        """
        xp = get_array_module(self.data)
        return xp.concatenate([p.grad.reshape(-1) for p in self.params])

    def view(self, flat, i):
        """Parameter ``i``'s slice of a flat array laid out like ``data`` (e.g. a moment), shaped as the parameter."""
        return flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
