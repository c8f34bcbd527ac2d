"""The module protocol, in PyTorch's terms, without autograd.

A :class:`Module` has

* ``forward(x)`` (also ``module(x)``; a layer that takes class labels has ``forward(x, y)``,
  ``module(x, y)``): computes the output and keeps, under named attributes of a cache, exactly
  what its backward needs;
* ``backward(grad_out) -> grad_in``: consumes that cache, returns dL/dx and *adds*
  dL/dp into each parameter's ``.grad`` (like ``loss.backward()`` in PyTorch, gradients
  accumulate until :meth:`Module.zero_grad`); inside ``with input_grad(module, False)`` it
  returns None and the layers that can skip dL/dx do;
* ``parameters()``, ``named_parameters()``, ``zero_grad()``, ``train()``/``eval()``,
  ``to(device, dtype)``, ``state_dict()``/``load_state_dict()`` with PyTorch's names.

Each forward replaces the cache and each backward consumes it, so every backward must
follow its own forward (like a PyTorch graph freed after ``backward()``); calling
``backward`` without one raises :class:`BackwardWithoutForwardError`.

**Second order** (the gradient penalty of WGAN-GP, :mod:`npsn.gan.gradient_penalty`). A loss that
depends on an input gradient g = dL/dx, here P(g), needs dP/dtheta *through* the backward pass. Inside
``with create_graph(module):`` a backward keeps its forward's cache and also keeps the upstream
gradient it received (``grad_out``), as PyTorch's ``backward(create_graph=True)`` keeps the graph of
the backward. Then ``double_backward(grad_grad_in)`` takes dP/dg for the layer's input gradient
("grad of grad_in", PyTorch's ggI), *adds* dP/dp into each parameter's ``.grad`` and returns dP/d(grad_out)
(ggO) for the layer after it: the backward pass run backwards, so a Sequential runs it from its first
layer to its last. Each layer derives its own in its docstring; a layer without one raises
NotImplementedError (BatchNorm and LayerNorm: the gradient penalty is offered for the discriminators
without them).
"""
from collections import OrderedDict
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from npsn import backend


class BackwardWithoutForwardError(RuntimeError):
    """``backward`` was called with no forward pass cached since the last backward."""


class Parameter:
    """A trainable array and its accumulated gradient.

    Attributes:
        data: the array (NumPy or CuPy).
        grad: ``None`` until a backward adds into it; then an array of ``data``'s shape.
        requires_grad: when False, layers skip computing this parameter's gradient
            (used to freeze D during the generator update).
    """

    def __init__(self, data, requires_grad=True):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad

    def accumulate_grad(self, grad):
        """Add ``grad`` into ``.grad``; the first gradient is stored as is.

        Callers pass a freshly computed array that nothing else keeps or writes to.
        """
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={backend.device_of(self.data)})"


@contextmanager
def create_graph(module):
    """Within the block, every backward of ``module`` and its sub-modules keeps what :meth:`Module.double_backward` needs.

    PyTorch's ``backward(create_graph=True)``: each layer's backward then leaves its forward's cache in
    place (instead of consuming it) and adds to it the upstream gradient ``grad_out`` it received. The
    matching ``double_backward`` (after the block) consumes both.
    """
    before = [(m, m.__dict__.get("creates_graph")) for m in module.modules()]
    for m, _ in before:
        object.__setattr__(m, "creates_graph", True)
    try:
        yield module
    finally:
        for m, value in before:
            if value is None:
                del m.__dict__["creates_graph"]
            else:
                object.__setattr__(m, "creates_graph", value)


def saved_caches(module):
    """The caches that ``module`` and its sub-modules hold now, for :func:`restore_caches` (a list of (module, cache)).

    Two forward passes, then the two backward passes, each against its own forward (PyTorch keeps two
    graphs): snapshot the first pass's caches before the second forward overwrites them, and restore
    them before the first pass's backward.
    """
    return [(m, m._cache) for m in module.modules()]


def restore_caches(caches):
    """Put back the caches of :func:`saved_caches`."""
    for m, cache in caches:
        object.__setattr__(m, "_cache", cache)


@contextmanager
def input_grad(module, needed):
    """Within the block, ``module.needs_input_grad`` is ``needed`` (the previous value is restored after).

    ``with input_grad(D, False): D.backward(g)`` computes D's parameter gradients only, as PyTorch
    does for an input that does not require a gradient (the discriminator update's images).
    """
    before = module.__dict__.get("needs_input_grad")
    object.__setattr__(module, "needs_input_grad", needed)
    try:
        yield module
    finally:
        if before is None:
            del module.__dict__["needs_input_grad"]
        else:
            object.__setattr__(module, "needs_input_grad", before)


class Module:
    """Base class of every layer and model.

    Sub-modules and :class:`Parameter` s assigned as attributes are registered
    automatically (in assignment order, which fixes ``state_dict`` order); buffers
    (non-trainable arrays saved in the ``state_dict``, e.g. BatchNorm's running
    statistics) are registered with :meth:`register_buffer`.
    """

    #: When False, :meth:`backward` returns None instead of dL/dx, and layers that can skip computing
    #: it do (PyTorch's ``ctx.needs_input_grad``); set for a block with :func:`input_grad`.
    needs_input_grad = True
    #: When True, :meth:`backward` keeps its cache for :meth:`double_backward`; set with :func:`create_graph`.
    creates_graph = False

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: buffers live in their own dict.
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name, array):
        """Register a non-trainable array that is saved in the ``state_dict``."""
        self._buffers[name] = array

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def double_backward(self, grad_grad_in):
        """dP/d(grad_out) of a loss P of this layer's input gradient, from ``grad_grad_in`` = dP/d(grad_in).

        Adds dP/dp into each parameter's ``.grad``; follows a backward run under :func:`create_graph`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no double backward (the gradient penalty's "
                                  f"second-order pass)")

    def save_for_backward(self, **named_arrays):
        """Keep what backward needs, under names from the math (``x_hat=...``, ``inv_std=...``)."""
        object.__setattr__(self, "_cache", SimpleNamespace(**named_arrays))

    def save_for_double_backward(self, **named_arrays):
        """Under :func:`create_graph`, add to the kept cache what :meth:`double_backward` needs of the backward
        (``grad_out=...``); otherwise nothing."""
        if self.creates_graph:
            vars(self._cache).update(named_arrays)

    def saved(self):
        """Return the cache of the last forward and clear it (a backward consumes its forward).

        Under :func:`create_graph` the cache stays, for the double backward that consumes it.
        """
        cache = self._cache
        if cache is None:
            raise BackwardWithoutForwardError(
                f"{type(self).__name__}.backward() called without a matching forward(): "
                "each backward needs its own forward pass first"
            )
        if not self.creates_graph:
            object.__setattr__(self, "_cache", None)
        return cache

    # ------------------------------------------------------------------ traversal
    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix=""):
        for name, b in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), b
        for name, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    # ------------------------------------------------------------------ state
    def zero_grad(self):
        """Reset every parameter's gradient to ``None`` (PyTorch's ``set_to_none=True``)."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag=True):
        """Turn gradient computation for all parameters on or off; returns ``self``."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def train(self, mode=True):
        """Set training mode (``mode=True``) or eval mode on this module and, recursively, its children."""
        object.__setattr__(self, "training", mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move (and/or cast) every parameter and floating buffer; integer buffers keep their dtype."""
        if device is not None:
            backend.check_device(device)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = _convert(p.data, device, dtype)
                p.grad = None if p.grad is None else _convert(p.grad, device, dtype)
            for name, b in m._buffers.items():
                floating = np.issubdtype(b.dtype, np.floating)
                m._buffers[name] = _convert(b, device, dtype if floating else None)
        return self

    def state_dict(self):
        """A flat ``{name: array}`` dict of parameters then buffers, with PyTorch's names."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = p.data
        for name, b in self.named_buffers():
            out[name] = b
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays (NumPy or CuPy, any device) into this module's parameters and buffers.

        Shapes must match exactly. With ``strict`` the key sets must match too (PyTorch's
        extra ``num_batches_tracked`` and ``*_orig`` names included).
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        params = dict(self.named_parameters())
        owners = {}
        for prefix, m in self.named_modules():
            for name in m._buffers:
                owners[f"{prefix}.{name}" if prefix else name] = (m, name)
        for key, target in own.items():
            if key not in state:
                continue
            value = state[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"load_state_dict: {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            converted = backend.to_device(value, backend.device_of(target), target.dtype).copy()
            if key in params:
                params[key].data = converted
            else:
                m, name = owners[key]
                m._buffers[name] = converted

    # ------------------------------------------------------------------ display
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _convert(array, device, dtype):
    return backend.to_device(array, device if device is not None else backend.device_of(array), dtype)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse. Children are named "0", "1", ..."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, grad_out):
        layers = list(self._modules.values())
        first = 0
        if not self.needs_input_grad:
            # The layers before the first one with parameters only pass dL/dx back: skip them,
            # and let that one skip dL/dx too.
            first = next((i for i, layer in enumerate(layers) if any(True for _ in layer.parameters())), len(layers))
        for i in reversed(range(first, len(layers))):
            with input_grad(layers[i], self.needs_input_grad or i > first):
                grad_out = layers[i].backward(grad_out)
        return grad_out if self.needs_input_grad else None

    def double_backward(self, grad_grad_in):
        """The backward pass ran the layers last to first, so its double backward runs them first to last."""
        for layer in self._modules.values():
            grad_grad_in = layer.double_backward(grad_grad_in)
        return grad_grad_in


class WeightLayer(Module):
    r"""A layer computed by an explicit-weight core: ``forward_with(x, W)`` and ``backward_with(G) -> (dL/dx, dL/dW)``.

    Subclasses (Linear, Conv2d, ConvTranspose2d) implement the core: ``forward_with`` computes
    the layer's output (bias included) with the weight array it is given and caches what backward
    needs; ``backward_with`` returns dL/dx (None when ``needs_input_grad`` is False) and dL/dW
    (None when ``weight.requires_grad`` is False) and adds the bias gradient itself. The layer's
    own pass uses its ``weight``; a wrapper such as :class:`~npsn.nn.spectral_norm.SpectralNorm`
    calls the core with another weight (W / sigma) and handles dL/dW itself.
    """

    def forward(self, x):
        return self.forward_with(x, self.weight.data)

    def backward(self, grad_out):
        grad_in, grad_weight = self.backward_with(grad_out)
        if grad_weight is not None:
            self.weight.accumulate_grad(grad_weight)
        return grad_in

    def double_backward(self, grad_grad_in):
        grad_grad_out, grad_weight = self.double_backward_with(grad_grad_in)
        if grad_weight is not None:
            self.weight.accumulate_grad(grad_weight)
        return grad_grad_out

    def forward_with(self, x, weight):
        raise NotImplementedError

    def backward_with(self, grad_out):
        raise NotImplementedError

    def double_backward_with(self, grad_grad_in):
        r"""``(dP/d(grad_out), dP/dW)`` for a loss P of the input gradient of the last :meth:`backward_with`.

        The input gradient of a layer linear in x is g_in = A_W^T G (G its upstream gradient, A_W the
        bias-free map x -> y - b): it depends on W and G, not on x. P's gradient through it, with
        R = dP/dg_in (``grad_grad_in``):

        .. math::
            \langle R, A_W^T G\rangle = \langle A_W R, G\rangle
            \quad\Rightarrow\quad
            \frac{\partial P}{\partial G} = A_W R, \qquad
            \frac{\partial P}{\partial W} = \frac{\partial \langle G, A_W R\rangle}{\partial W},

        the forward map (without bias) applied to R, and the layer's own weight gradient for input R and
        upstream gradient G (the map is bilinear in (x, W)). The bias does not enter g_in: no bias gradient.
        dP/dW is None when ``weight.requires_grad`` is False. Needs the cache of a backward run under
        :func:`create_graph` (W and G); consumes it.
        """
        raise NotImplementedError
