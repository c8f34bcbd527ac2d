"""The PyTorch mirror of npsn models, and checks that npsn and PyTorch compute the same.

npsn never needs PyTorch; this module imports it only inside the functions that use it, so it
imports without torch and raises :class:`ImportError` (saying so) only when such a function runs.

* :func:`to_torch`: the PyTorch module with the architecture and the current weights of an npsn
  module tree (Sequential, Residual, SpectralNorm, WeightNorm, Linear, Conv2d, ConvTranspose2d,
  BatchNorm1d/2d, LayerNorm, Bias, activations, pooling, layout layers; and the class-conditional
  Embedding, CategoricalConditionalBatchNorm1d/2d, ConditionalSequential, ConditionalResidual,
  Projection), with npsn's ``state_dict`` names.
* :func:`compare_forward_backward`: one forward and backward through an npsn module and its
  mirror; max relative errors of the output, the input gradient and every parameter gradient
  (``labels=`` for a module that takes class labels).
* :func:`compare_gan`: D's and G's outputs and D's input gradient, in float64 and float32
  (``y=`` for class-conditional models).
* :class:`TorchTrainer` and :func:`compare_training`: npsn's training step
  (:class:`npsn.gan.trainer.Trainer`) in PyTorch, and the agreement of the two, losses included;
  every discriminator method of :mod:`npsn.gan.methods` (the gradient penalty by
  ``torch.autograd.grad(..., create_graph=True)``, the orthonormal penalty and weight clipping).
* :func:`compare_discriminator_update`: one whole D update (loss, its regularizers, Adam) of npsn
  and of PyTorch autograd from the same state: the gradients and the updated parameters.

**Layouts.** npsn keeps images channels-last (N, H, W, C) inside networks; the mirror is NCHW
throughout (npsn's layout layers become ``nn.Identity``). A model that starts with
:class:`~npsn.nn.reshape.ToChannelsLast` and ends with :class:`~npsn.nn.reshape.ToChannelsFirst`
(npsn's G and D) takes and returns NCHW on both sides; a bare layer takes NHWC in npsn and NCHW in
the mirror. The comparisons transpose 4-D arrays at the boundary where needed
(:func:`channels_last_boundaries`).

**Errors** are max relative errors, ``max |ours - theirs| / max |theirs|``
(:func:`relative_error`): about 1e-15 in float64 when both compute the same function.

Example (it runs only where PyTorch is installed)::

    >>> import importlib.util
    >>> import numpy as np
    >>> import npsn
    >>> if importlib.util.find_spec("torch") is not None:
    ...     layer = npsn.SpectralNorm(npsn.Conv2d(3, 4, 3, 1, 1)).to(dtype=np.float64)
    ...     x = np.random.default_rng(0).standard_normal((2, 5, 5, 3))  # NHWC, as npsn's Conv2d takes
    ...     errors = compare_forward_backward(layer, x)
    ...     assert sorted(errors) == ["bias.grad", "input_grad", "output", "weight_orig.grad"]
    ...     assert max(errors.values()) < 1e-10, errors
"""
import copy
import functools

import numpy as np

import npsn
from npsn import backend
from npsn.data.cifar10 import MinibatchStream
from npsn.nn.activations import Scale
from npsn.nn.reparametrized import ReparametrizedWeight

#: Max relative errors below which :func:`compare_training` reports agreement.
TOLERANCE_FLOAT64 = 1e-9
#: float32 outputs (D's input gradient is not held to it: see :func:`compare_gan`).
TOLERANCE_FLOAT32 = 1e-4
#: losses after training iterations in float32, where ReLU kinks and Adam's first steps amplify rounding.
TOLERANCE_LOSSES = 1e-2


# ---------------------------------------------------------------------------------------------- basics
def require_torch():
    """Import and return ``torch``, or raise ImportError saying that this needs PyTorch."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError("npsn.testing.torch_reference needs PyTorch for this (npsn itself never does): "
                          "pip install torch") from exc
    return torch


def relative_error(ours, theirs, scale=None):
    """max |ours - theirs| / max |theirs|, in float64, as a Python float.

    Args:
        ours, theirs: arrays (NumPy, CuPy or torch tensors) of the same shape.
        scale: divide by this instead of max |theirs|.
    Returns:
        the max relative error; the plain max |difference| where the scale is 0.
    Raises:
        ValueError: if the shapes differ.

    >>> relative_error([1.0, 2.5], [1.0, 2.0])
    0.25
    """
    ours, theirs = _host(ours).astype(np.float64), _host(theirs).astype(np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {theirs.shape}")
    if ours.size == 0:
        return 0.0
    scale = np.max(np.abs(theirs)) if scale is None else scale
    diff = np.max(np.abs(ours - theirs))
    return float(diff / scale if scale > 0 else diff)


def to_npsn_layout(array):
    """NCHW -> NHWC for 4-D arrays (a transposed view); other arrays unchanged."""
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def to_torch_layout(array):
    """NHWC -> NCHW for 4-D arrays (a transposed view); other arrays unchanged."""
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array


def _host(a):
    """A NumPy array of ``a`` (NumPy, CuPy, torch tensor or anything np.asarray takes)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        return a.detach().cpu().numpy()
    return np.asarray(backend.to_numpy(a)) if hasattr(a, "shape") else np.asarray(a)


def _leaves(module):
    """npsn's leaf layers of ``module`` in the order a forward runs them (a Residual: its residual branch)."""
    if isinstance(module, npsn.Sequential):
        for child in module:
            yield from _leaves(child)
    elif isinstance(module, npsn.Residual):
        yield from _leaves(module.residual)
    elif isinstance(module, ReparametrizedWeight):  # SpectralNorm, WeightNorm
        yield from _leaves(module.module)
    else:
        yield module


def channels_last_boundaries(module):
    """(input, output): whether ``module`` takes and returns 4-D arrays channels-last (NHWC).

    npsn's convention: images are NHWC inside networks; a module that starts with
    :class:`~npsn.nn.reshape.ToChannelsLast` takes NCHW, one that ends with
    :class:`~npsn.nn.reshape.ToChannelsFirst` returns NCHW (elementwise activations before or
    after them do not count). Only 4-D arrays are ever transposed, so the answer does not matter
    for 2-D ones.

    >>> import npsn
    >>> channels_last_boundaries(npsn.Sequential(npsn.ToChannelsLast(), npsn.Conv2d(3, 4, 3)))
    (False, True)
    """
    elementwise = (npsn.ReLU, npsn.LeakyReLU, npsn.Tanh, npsn.Sigmoid, Scale)
    shaping = [leaf for leaf in _leaves(module) if not isinstance(leaf, elementwise)]
    if not shaping:
        return True, True
    return not isinstance(shaping[0], npsn.ToChannelsLast), not isinstance(shaping[-1], npsn.ToChannelsFirst)


def _parameter_dtype(module):
    """The dtype of the module's first floating-point parameter or buffer, or None."""
    arrays = [p.data for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]
    for a in arrays:
        if np.issubdtype(np.dtype(a.dtype), np.floating):
            return np.dtype(a.dtype)
    return None


def _npsn_device(module):
    params = [p.data for p in module.parameters()]
    return backend.device_of(params[0]) if params else "cpu"


# ---------------------------------------------------------------------------------------------- the mirror
@functools.cache
def _torch_layers():
    """The PyTorch modules that torch.nn lacks (defined once, when first needed)."""
    torch = require_torch()
    nn = torch.nn

    class Residual(nn.Module):
        """y = residual(x) + shortcut(x) (identity when shortcut is None): npsn.Residual's children."""

        def __init__(self, residual, shortcut):
            super().__init__()
            self.residual = residual
            self.shortcut = shortcut

        def forward(self, x):
            return self.residual(x) + (x if self.shortcut is None else self.shortcut(x))

    class GlobalSumPool2d(nn.Module):
        """(N, C, H, W) -> (N, C): the sum over positions."""

        def forward(self, x):
            return x.sum(dim=(2, 3))

    class Scale(nn.Module):
        """y = factor * x."""

        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    class Bias(nn.Module):
        """y = x + bias along the channels (NCHW: axis 1) or the features."""

        def __init__(self, num_features):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(num_features))

        def forward(self, x):
            return x + self.bias.reshape((1, -1) + (1,) * (x.ndim - 2))

    class LayerNorm(nn.Module):
        """``F.layer_norm`` over every axis but the batch, without affine parameters."""

        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def forward(self, x):
            return torch.nn.functional.layer_norm(x, x.shape[1:], eps=self.eps)

    class WeightNorm(nn.Module):
        """A Linear / Conv2d / ConvTranspose2d computed with W = V / ||V_i|| per output unit (axis ``dim``), by autograd."""

        def __init__(self, layer, dim, eps):
            super().__init__()
            self.weight_v = nn.Parameter(layer.weight.detach().clone())
            self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
            self.layer, self.dim, self.eps = [layer], dim, eps  # in a list: not a child (its parameters are these)

        def forward(self, x):
            V = self.weight_v
            rows = V.movedim(self.dim, 0).reshape(V.shape[self.dim], -1)
            shape = [1] * V.ndim
            shape[self.dim] = -1
            # W_i = V_i / max(||V_i||, eps)
            W = V / rows.norm(dim=1).clamp(min=self.eps).reshape(shape)
            layer = self.layer[0]
            if isinstance(layer, nn.Linear):
                return torch.nn.functional.linear(x, W, self.bias)
            conv = torch.nn.functional.conv2d if isinstance(layer, nn.Conv2d) else torch.nn.functional.conv_transpose2d
            return conv(x, W, self.bias, layer.stride, layer.padding)

    return Residual, GlobalSumPool2d, Scale, Bias, LayerNorm, WeightNorm


@functools.cache
def _torch_conditional_layers():
    """PyTorch modules for npsn's layers that take class labels y (a LongTensor (N,)); ``takes_labels`` marks them."""
    torch = require_torch()
    nn, F = torch.nn, torch.nn.functional

    def call(layer, x, y):
        return layer(x, y) if getattr(layer, "takes_labels", False) else layer(x)

    class ConditionalSequential(nn.Sequential):
        """nn.Sequential whose forward(x, y) hands y to the children that take labels."""

        takes_labels = True

        def forward(self, x, y):
            for layer in self:
                x = call(layer, x, y)
            return x

    class ConditionalResidual(nn.Module):
        """residual(x, y) + shortcut(x, y) (identity when shortcut is None)."""

        takes_labels = True

        def __init__(self, residual, shortcut):
            super().__init__()
            self.residual = residual
            self.shortcut = shortcut

        def forward(self, x, y):
            return call(self.residual, x, y) + (x if self.shortcut is None else call(self.shortcut, x, y))

    class CategoricalConditionalBatchNorm(nn.Module):
        """BatchNorm without affine parameters, then weight[y] * x_hat + bias[y]; weight, bias (K, C).

        Running statistics as ``nn.BatchNorm2d`` (``F.batch_norm`` updates them; num_batches_tracked counted here).
        """

        takes_labels = True

        def __init__(self, num_features, num_classes, eps, momentum):
            super().__init__()
            self.eps, self.momentum = eps, momentum
            self.weight = nn.Parameter(torch.ones(num_classes, num_features))
            self.bias = nn.Parameter(torch.zeros(num_classes, num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

        def forward(self, x, y):
            if self.training:
                self.num_batches_tracked += 1
            x_hat = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training,
                                 self.momentum, self.eps)
            shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)  # NCHW: per sample and channel
            return self.weight[y].reshape(shape) * x_hat + self.bias[y].reshape(shape)

    class Projection(nn.Module):
        """linear(h) + sum(embedding(y) * h, dim=1, keepdim=True): the projection discriminator's output."""

        takes_labels = True

        def __init__(self, linear, embedding):
            super().__init__()
            self.linear = linear
            self.embedding = embedding

        def forward(self, h, y):
            return self.linear(h) + (self.embedding(y) * h).sum(dim=1, keepdim=True)

    return ConditionalSequential, ConditionalResidual, CategoricalConditionalBatchNorm, Projection


def _builders():
    """{npsn layer class: function(npsn layer, convert) -> torch module} for npsn's own layers."""
    nn = require_torch().nn
    TorchResidual, TorchGlobalSumPool2d, TorchScale, TorchBias, TorchLayerNorm, TorchWeightNorm = _torch_layers()

    def conv(m, cls):
        return cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)

    def batchnorm(m, cls):
        return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine)

    TorchCondSequential, TorchCondResidual, TorchCCBN, TorchProjection = _torch_conditional_layers()
    return {
        npsn.ConditionalSequential: lambda m, convert: TorchCondSequential(*(convert(child) for child in m)),
        npsn.ConditionalResidual: lambda m, convert: TorchCondResidual(
            convert(m.residual), None if m.shortcut is None else convert(m.shortcut)),
        npsn.CategoricalConditionalBatchNorm1d: lambda m, convert: TorchCCBN(m.num_features, m.num_classes, m.eps,
                                                                             m.momentum),
        npsn.CategoricalConditionalBatchNorm2d: lambda m, convert: TorchCCBN(m.num_features, m.num_classes, m.eps,
                                                                             m.momentum),
        npsn.Projection: lambda m, convert: TorchProjection(convert(m.linear), convert(m.embedding)),
        npsn.Embedding: lambda m, convert: nn.Embedding(m.num_embeddings, m.embedding_dim),
        npsn.Sequential: lambda m, convert: nn.Sequential(*(convert(child) for child in m)),
        npsn.Residual: lambda m, convert: TorchResidual(convert(m.residual),
                                                        None if m.shortcut is None else convert(m.shortcut)),
        npsn.SpectralNorm: lambda m, convert: nn.utils.spectral_norm(
            convert(m.module), n_power_iterations=m.n_power_iterations, eps=m.eps, dim=m.dim),
        npsn.WeightNorm: lambda m, convert: TorchWeightNorm(convert(m.module), m.dim, m.eps),
        npsn.LayerNorm: lambda m, convert: TorchLayerNorm(m.eps),
        npsn.Bias: lambda m, convert: TorchBias(m.num_features),
        npsn.Linear: lambda m, convert: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
        npsn.Conv2d: lambda m, convert: conv(m, nn.Conv2d),
        npsn.ConvTranspose2d: lambda m, convert: conv(m, nn.ConvTranspose2d),
        npsn.BatchNorm1d: lambda m, convert: batchnorm(m, nn.BatchNorm1d),
        npsn.BatchNorm2d: lambda m, convert: batchnorm(m, nn.BatchNorm2d),
        npsn.ReLU: lambda m, convert: nn.ReLU(),
        npsn.LeakyReLU: lambda m, convert: nn.LeakyReLU(m.negative_slope),
        npsn.Tanh: lambda m, convert: nn.Tanh(),
        npsn.Sigmoid: lambda m, convert: nn.Sigmoid(),
        Scale: lambda m, convert: TorchScale(m.factor),
        npsn.Upsample: lambda m, convert: nn.Upsample(scale_factor=m.scale_factor, mode="nearest"),
        npsn.AvgPool2d: lambda m, convert: nn.AvgPool2d(m.kernel_size),
        npsn.GlobalSumPool2d: lambda m, convert: TorchGlobalSumPool2d(),
        npsn.Reshape: lambda m, convert: nn.Unflatten(1, m.chw),
        npsn.Flatten: lambda m, convert: nn.Flatten(),
        npsn.ToChannelsLast: lambda m, convert: nn.Identity(),  # the mirror is NCHW throughout
        npsn.ToChannelsFirst: lambda m, convert: nn.Identity(),
    }


def to_torch(module, load_weights=True, converters=None):
    """The PyTorch module that computes what the npsn ``module`` computes, with its weights.

    Args:
        module: an npsn module tree (a model or a single layer).
        load_weights: copy npsn's ``state_dict`` (parameters, SN's ``weight_u``/``weight_v``, BN's
            running statistics) into the mirror, strictly (:func:`load_npsn_state`); else the
            mirror keeps PyTorch's initial values.
        converters: ``{npsn layer class: function(layer, convert) -> torch module}`` for layers of
            your own (``convert`` converts a child); they override the built-in ones.
    Returns:
        a ``torch.nn.Module`` on the CPU, in npsn's dtype (float32 or float64), with npsn's
        ``state_dict`` names, each submodule in its npsn counterpart's train/eval mode, and each
        parameter's ``requires_grad`` copied. SpectralNorm becomes ``torch.nn.utils.spectral_norm``
        (parameter ``weight_orig``, buffers ``weight_u``, ``weight_v``); layout layers become
        ``nn.Identity`` or ``nn.Unflatten``/``nn.Flatten`` (see the module docstring).
    Raises:
        TypeError: for an npsn layer with no PyTorch counterpart.
    """
    torch = require_torch()
    builders = _builders()
    builders.update(converters or {})

    def convert(m):
        build = builders.get(type(m))
        if build is None:
            raise TypeError(f"no PyTorch counterpart for npsn layer {type(m).__name__}: pass converters=")
        mirror = build(m, convert)
        mirror.training = m.training  # this module only: its children were set when converted
        return mirror

    with torch.no_grad():
        mirror = convert(module)
    dtype = _parameter_dtype(module)
    if dtype is not None:
        mirror.to(getattr(torch, dtype.name))
    if load_weights:
        load_npsn_state(mirror, module)
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    for name, p in mirror.named_parameters():
        p.requires_grad_(flags.get(name, True))
    return mirror


def load_npsn_state(torch_module, module):
    """Copy the npsn ``module``'s ``state_dict`` into ``torch_module`` (strictly, same names); returns it."""
    torch = require_torch()
    state = {k: torch.from_numpy(np.array(backend.to_numpy(v), copy=True)) for k, v in module.state_dict().items()}
    torch_module.load_state_dict(state, strict=True)
    return torch_module


# ---------------------------------------------------------------------------------------------- one step
def compare_forward_backward(module, x, grad_output=None, torch_module=None, rng=0, grad_scale="parameter",
                             labels=None):
    """One forward and backward through an npsn module and its PyTorch mirror; their max relative errors.

    Args:
        module: an npsn module; it runs in its current mode (train: SN power iteration and BN
            batch statistics, which the mirror repeats from the same state).
        x: the input in npsn's layout (NumPy or CuPy; float64 for a tight comparison), e.g.
            (N, H, W, C) for a Conv2d, (N, 3, 32, 32) for npsn's discriminators.
        grad_output: dL/dy in npsn's layout, or None to draw it from N(0, 1) with ``rng``.
        torch_module: the mirror to compare with (default: :func:`to_torch` of ``module`` now,
            i.e. before this forward, so that both start from the same state).
        rng: seed or ``numpy.random.Generator`` for ``grad_output``.
        grad_scale: ``"parameter"``: each parameter's gradient relative to its own largest
            entry; ``"module"``: relative to the largest gradient entry over all parameters
            (for whole models, where some gradients are zero in exact arithmetic, e.g. the bias
            of a layer followed by BatchNorm, and only rounding noise is left to compare).
        labels: class labels (N,) integers for a module that takes them (``module(x, labels)``; the
            mirror gets them as a LongTensor); None for the others. For an Embedding alone (whose input
            *is* the labels) pass ``x=None``: then there is no ``input_grad`` entry.
    Returns:
        ``{"output": e, "input_grad": e, "<parameter name>.grad": e, ...}``, each a max relative
        error (:func:`relative_error`); ``inf`` for a parameter to which npsn gave no gradient.
        Both modules' parameter gradients are zeroed first and hold this step's afterwards.
    Raises:
        ValueError: if the two modules' parameter names differ, or for an unknown ``grad_scale``.
    """
    torch = require_torch()
    if grad_scale not in ("parameter", "module"):
        raise ValueError(f"grad_scale must be 'parameter' or 'module', got {grad_scale!r}")
    if torch_module is None:
        torch_module = to_torch(module)
    cl_in, cl_out = channels_last_boundaries(module)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    first = next(torch_module.parameters(), None)
    torch_device = first.device if first is not None else torch.device("cpu")

    def to_tensor(a_npsn, channels_last):
        a = _host(a_npsn)
        return torch.from_numpy(np.ascontiguousarray(to_torch_layout(a) if channels_last else a)).to(torch_device)

    def from_tensor(t, channels_last):
        a = _host(t)
        return to_npsn_layout(a) if channels_last else a

    module.zero_grad()
    torch_module.zero_grad(set_to_none=True)
    ours_args, their_args = [], []
    if x is not None:
        x_torch = to_tensor(x, cl_in).requires_grad_(True)
        ours_args, their_args = [x], [x_torch]
    if labels is not None:
        ours_args.append(labels)
        their_args.append(torch.from_numpy(_host(labels).astype(np.int64)).to(torch_device))
    y_torch = torch_module(*their_args)
    y = module(*ours_args)
    if grad_output is None:
        xp = backend.get_array_module(y)
        grad_output = xp.asarray(rng.standard_normal(y.shape).astype(y.dtype))
    y_torch.backward(to_tensor(grad_output, cl_out))
    grad_x = module.backward(grad_output)

    errors = {"output": relative_error(y, from_tensor(y_torch, cl_out))}
    if x is not None:
        errors["input_grad"] = relative_error(grad_x, from_tensor(x_torch.grad, cl_in))
    ours = dict(module.named_parameters())
    theirs = dict(torch_module.named_parameters())
    if set(ours) != set(theirs):
        raise ValueError(f"parameter names differ: npsn only {sorted(set(ours) - set(theirs))}, "
                         f"torch only {sorted(set(theirs) - set(ours))}")
    their_grads = {name: np.zeros(tuple(p.shape)) if p.grad is None else _host(p.grad) for name, p in theirs.items()}
    scale = None
    if grad_scale == "module":
        scale = max((float(np.max(np.abs(g))) for g in their_grads.values() if g.size), default=0.0)
    for name, p in ours.items():
        errors[f"{name}.grad"] = (float("inf") if p.grad is None
                                  else relative_error(p.grad, their_grads[name], scale=scale))
    return errors


# ---------------------------------------------------------------------------------------------- a GAN
def compare_gan(G, D, x, z, torch_G=None, torch_D=None, y=None):
    """D's output, D's input gradient and G's output of npsn's models and their mirrors.

    Args:
        G, D: npsn generator and discriminator (float32, train mode; on either device).
        x: a batch of images (N, 3, 32, 32), NCHW float32 NumPy; z: noise (N, z_dim) float32 NumPy.
        torch_G, torch_D: the mirrors, holding the same weights (default: :func:`to_torch` of G, D);
            on the CPU, or on CUDA for models on the GPU.
        y: class labels (N,) int32 NumPy for class-conditional models (G(z, y), D(x, y)); None otherwise.
    Returns:
        ``{"float64": {...}, "float32": {...}}`` of max relative errors:

        1. float64, on copies of all four models (the "same math" check, ~1e-15 when correct):
           in train mode (one power iteration, batch statistics), ``d_output``, ``d_input_grad``
           (of dL/dD(x) = 1) and ``g_output``;
        2. float32, on the models themselves: the same three in train mode, then ``eval_d_output``
           and ``eval_g_output`` in eval mode (after the train-mode pass, so that
           sigma = u^T W v comes from power-iterated u, v: with random u, v it may be <= 0, where
           npsn clamps it to eps and torch does not). The models are left in train mode; the
           train-mode passes advanced SN's u, v and BN's running statistics on both sides alike.

    In float32, D's input gradient differs by up to ~1e-2 of its maximum between any two
    implementations (torch's own float32 result differs that much from its float64 one): it
    jumps where a (Leaky)ReLU input crosses 0, and rounding moves inputs near 0 across. Hold it
    to a tolerance in float64 only.
    """
    torch = require_torch()
    torch_G = to_torch(G) if torch_G is None else torch_G
    torch_D = to_torch(D) if torch_D is None else torch_D
    device = _npsn_device(D)
    xp = backend.xp_for(device)
    torch_device = next(torch_D.parameters()).device

    labels = () if y is None else (backend.to_device(y, device),)
    labels_torch = () if y is None else (torch.from_numpy(np.asarray(y).astype(np.int64)).to(torch_device),)

    def npsn_pass(G, D, x, z):
        """(D(x), dD(x)/dx summed over the batch, G(z)) of npsn models, as host arrays."""
        d_out = D(x, *labels)
        grad_x = D.backward(xp.ones_like(d_out))  # NCHW: D's first layer converts to channels-last
        D.zero_grad()
        return _host(d_out), _host(grad_x), _host(G(z, *labels))

    def torch_pass(G, D, x, z):
        x = x.clone().requires_grad_(True)
        d_out = D(x, *labels_torch)
        d_out.backward(torch.ones_like(d_out))
        D.zero_grad(set_to_none=True)
        with torch.no_grad():
            return _host(d_out), _host(x.grad), _host(G(z, *labels_torch))

    names = ("d_output", "d_input_grad", "g_output")
    x_npsn, z_npsn = backend.to_device(x, device), backend.to_device(z, device)
    x_torch, z_torch = torch.from_numpy(x).to(torch_device), torch.from_numpy(z).to(torch_device)
    ours64 = [copy.deepcopy(m).to(dtype=np.float64) for m in (G, D)]
    theirs64 = [copy.deepcopy(m).double() for m in (torch_G, torch_D)]
    values64 = (npsn_pass(*ours64, x_npsn.astype(np.float64), z_npsn.astype(np.float64)),
                torch_pass(*theirs64, x_torch.double(), z_torch.double()))
    float64 = {name: relative_error(a, b) for name, a, b in zip(names, *values64)}
    del ours64, theirs64, values64
    values32 = (npsn_pass(G, D, x_npsn, z_npsn), torch_pass(torch_G, torch_D, x_torch, z_torch))
    float32 = {name: relative_error(a, b) for name, a, b in zip(names, *values32)}
    models = (G, D, torch_G, torch_D)
    with torch.no_grad():
        for m in models:
            m.eval()
        float32["eval_d_output"] = relative_error(D(x_npsn, *labels), torch_D(x_torch, *labels_torch))
        float32["eval_g_output"] = relative_error(G(z_npsn, *labels), torch_G(z_torch, *labels_torch))
        for m in models:
            m.train()
    return {"float64": float64, "float32": float32}


def _torch_losses(torch):
    """{loss name: (d_loss(d_real, d_fake), g_loss(d_fake))}: npsn.gan.losses.LOSSES in PyTorch."""
    f = torch.nn.functional
    return {
        # mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))) ; -mean(D(G(z)))
        "hinge": (lambda real, fake: torch.relu(1 - real).mean() + torch.relu(1 + fake).mean(),
                  lambda fake: -fake.mean()),
        # mean(softplus(-D(x))) + mean(softplus(D(G(z)))) ; mean(softplus(-D(G(z))))
        "nonsaturating": (lambda real, fake: f.softplus(-real).mean() + f.softplus(fake).mean(),
                          lambda fake: f.softplus(-fake).mean()),
        # mean(D(G(z))) - mean(D(x)) ; -mean(D(G(z)))
        "wasserstein": (lambda real, fake: fake.mean() - real.mean(), lambda fake: -fake.mean()),
    }


class TorchDiscriminatorMethod:
    """The D update of an npsn run's method (:func:`npsn.gan.methods.discriminator_regularizers`) in PyTorch autograd.

    Args:
        D: the npsn discriminator the regularizers were built for; torch_D: its mirror.
        regularizers: npsn's :class:`~npsn.gan.updates.DiscriminatorRegularizer` s, read for their settings
            (lambda, beta, c, which weights): the PyTorch side computes each independently.
        sample_eps: ``sample_eps(n)`` -> the gradient penalty's n epsilons (NumPy), drawn in npsn's order.

    :meth:`objective` is the D loss with every penalty, as one autograd graph (PyTorch differentiates
    the gradient penalty by ``torch.autograd.grad(..., create_graph=True)``); :meth:`after_step` clips.
    """

    def __init__(self, D, torch_D, regularizers, sample_eps=None):
        from npsn.gan.gradient_penalty import GradientPenalty
        from npsn.gan.orthonormal import OrthonormalRegularization
        from npsn.gan.weight_clipping import WeightClipping

        self.torch = torch = require_torch()
        names = {id(p): name for name, p in D.named_parameters()}
        theirs = dict(torch_D.named_parameters())
        self.penalty_weight, self.orthonormal, self.clipping = None, [], []
        for r in regularizers:
            if isinstance(r, GradientPenalty):
                self.penalty_weight = r.weight
            elif isinstance(r, OrthonormalRegularization):
                self.orthonormal = [(theirs[names[id(p)]], r.coefficient) for p in r.weights]
            elif isinstance(r, WeightClipping):
                self.clipping = [(theirs[names[id(p)]], r.c) for p in r.weights]
            else:
                raise TypeError(f"no PyTorch counterpart for {type(r).__name__}")
        self.D, self.sample_eps = torch_D, sample_eps
        # a D with BatchNorm sees the real and the generated batch in passes of their own (as npsn's D update)
        self.separate = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                            for m in torch_D.modules())

    def gradient_penalty(self, x_hat, weight):
        """lambda mean (||grad_x D(x_hat)|| - 1)^2, differentiable with respect to D's parameters."""
        torch = self.torch
        x_hat = x_hat.detach().requires_grad_(True)
        g, = torch.autograd.grad(self.D(x_hat).sum(), x_hat, create_graph=True)
        return weight * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def orthonormal_penalty(self, W):
        """||W^T W - I||_F^2 as written (W: the (out, rest) matrix), less the max(w - h, 0) that a wide W cannot remove."""
        torch = self.torch
        M = W.reshape(W.shape[0], -1)
        h, w = M.shape
        return ((M.T @ M - torch.eye(w, dtype=M.dtype, device=M.device)) ** 2).sum() - max(w - h, 0)

    def objective(self, d_loss, x_real, x_fake, labels=None):
        """D's loss on the real and the generated batch plus its penalties (one graph; G's output is a constant)."""
        torch, D, b = self.torch, self.D, x_real.shape[0]
        if self.separate:
            loss = d_loss(D(x_real), D(x_fake))
        else:
            x = torch.cat([x_real, x_fake])
            logits = D(x) if labels is None else D(x, labels)
            loss = d_loss(logits[:b], logits[b:])
        if self.penalty_weight is not None:
            eps = torch.from_numpy(np.asarray(_host(self.sample_eps(b)))).to(x_real).reshape(b, 1, 1, 1)
            loss = loss + self.gradient_penalty(eps * x_real + (1 - eps) * x_fake, self.penalty_weight)
        for W, coefficient in self.orthonormal:
            loss = loss + coefficient * self.orthonormal_penalty(W)
        return loss

    def after_step(self):
        """Weight clipping: W <- clamp(W, -c, c)."""
        with self.torch.no_grad():
            for W, c in self.clipping:
                W.clamp_(-c, c)


def compare_discriminator_update(G, D, x_real, z, loss, regularizers=(), lr=2e-4, betas=(0.5, 0.999), steps=1):
    """npsn's D update (:func:`npsn.gan.updates.discriminator_update`) against PyTorch autograd, from one state.

    Args:
        G, D: npsn models (float64 for a tight comparison), unconditional, in their current mode.
        x_real, z: a real batch (N, 3, 32, 32) and z (N, z_dim), NumPy, in the models' dtype.
        loss: a name of :data:`npsn.gan.trainer.LOSS_CHOICES` (wgan-gp and gan-gp add the gradient penalty
            only if ``regularizers`` holds one: build them with :func:`npsn.gan.methods.discriminator_regularizers`).
        regularizers: npsn's D regularizers on ``D``'s parameters; a gradient penalty's ``sample_eps`` is
            called by npsn, and PyTorch gets the same epsilons.
        lr, betas: Adam's, on both sides (fresh moments).
        steps: D updates run on each side, on the same batch (the last one's gradients are compared).
    Returns:
        ``{"loss": e, "<parameter>.grad": e, ..., "<parameter>": e, ...}``: max relative errors
        (:func:`relative_error`) of the D objective (loss and penalties), of every parameter's gradient
        in the last update (relative to the largest gradient entry of D: some are 0 in exact arithmetic,
        as the final bias's under the Wasserstein loss), and of every parameter after the updates
        (relative to D's largest parameter entry: Adam turns a gradient of rounding noise into steps of up
        to lr). G and D are left updated.
    """
    from npsn.gan.gradient_penalty import PENALIZED_LOSSES, GradientPenalty
    from npsn.gan.losses import get_loss
    from npsn.gan.updates import discriminator_update
    from npsn.optim import Adam

    torch = require_torch()
    torch_G, torch_D = to_torch(G), to_torch(D)
    drawn = []  # the epsilons npsn draws, replayed for PyTorch
    originals = {id(r): r.sample_eps for r in regularizers if isinstance(r, GradientPenalty)}
    for r in regularizers:
        if id(r) in originals:
            r.sample_eps = lambda n, draw=originals[id(r)]: drawn.append(draw(n)) or drawn[-1]
    method = TorchDiscriminatorMethod(D, torch_D, regularizers, sample_eps=lambda n: drawn.pop(0))
    base = PENALIZED_LOSSES.get(loss, loss)
    opt = Adam(D.parameters(), lr=lr, betas=betas)
    torch_opt = torch.optim.Adam(torch_D.parameters(), lr=lr, betas=betas)
    x_torch, z_torch = torch.from_numpy(np.asarray(x_real)), torch.from_numpy(np.asarray(z))
    try:
        for _ in range(steps):
            ours = discriminator_update(G, D, opt, get_loss(base)[0], x_real, z, regularizers=regularizers)
            with torch.no_grad():
                x_fake = torch_G(z_torch)
            theirs = method.objective(_torch_losses(torch)[base][0], x_torch, x_fake)
            torch_opt.zero_grad(set_to_none=True)
            theirs.backward()
            torch_opt.step()
            method.after_step()
    finally:
        for r in regularizers:
            if id(r) in originals:
                r.sample_eps = originals[id(r)]
    errors = {"loss": relative_error(ours, theirs.detach())}
    their_params = dict(torch_D.named_parameters())
    grad_scale = max(float(p.grad.abs().max()) for p in their_params.values() if p.grad is not None)
    scale = max(float(p.detach().abs().max()) for p in their_params.values())
    for name, p in D.named_parameters():
        errors[f"{name}.grad"] = relative_error(p.grad, their_params[name].grad, scale=grad_scale)
        errors[name] = relative_error(p.data, their_params[name].detach(), scale=scale)
    return errors


class TorchTrainer:
    """The training step of :class:`npsn.gan.trainer.Trainer` in PyTorch, from the trainer's current state.

    Args:
        trainer: an npsn Trainer. Its G and D (weights, SN's u and v, BN statistics), its data
            stream position, noise generator state, iteration count and learning-rate schedule
            are copied, so both then draw the same batches and noise. Adam's moments start at
            zero: mirror a trainer before its first update for runs that should agree.

    Attributes:
        G, D: the mirrors (:func:`to_torch`), in train mode, on CUDA for a GPU trainer.
        opt_g, opt_d: ``torch.optim.Adam`` with the trainer's hyperparameters (default implementation).

    Like the Trainer: the D update runs G under ``torch.no_grad()`` and D once over real and fake
    concatenated (a D with BatchNorm: once over each), plus the run's method
    (:class:`TorchDiscriminatorMethod`: the gradient penalty with epsilons from a copy of the trainer's
    ``penalty_noise``, the orthonormal penalty, weight clipping); the G update runs D with
    ``requires_grad`` off; an iteration is ``n_dis`` D updates and one G update, with one device-to-host
    copy of the two losses.

    A class-conditional trainer (``config.num_classes`` > 0) is mirrored too: the real images'
    labels go to D with them, G's labels come from a copy of the trainer's ``label_noise`` stream,
    drawn in the trainer's order (:func:`npsn.gan.updates.gan_iteration`: per D update the real
    batch, z, then G's labels; then z and labels for the G update).
    """

    def __init__(self, trainer):
        torch = require_torch()
        c = trainer.config
        self.torch, self.config = torch, c
        self.device = torch.device("cuda" if c.device == "gpu" else "cpu")
        self.G = to_torch(trainer.G).to(self.device).train()
        self.D = to_torch(trainer.D).to(self.device).train()
        self.opt_g, self.opt_d = (
            torch.optim.Adam(model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                             weight_decay=opt.weight_decay)
            for model, opt in ((self.G, trainer.opt_g), (self.D, trainer.opt_d)))
        from npsn.gan.gradient_penalty import PENALIZED_LOSSES

        self.d_loss, self.g_loss = _torch_losses(torch)[PENALIZED_LOSSES.get(c.loss, c.loss)]
        self.penalty_noise = copy.deepcopy(trainer.penalty_noise)
        self.method = TorchDiscriminatorMethod(trainer.D, self.D, trainer.d_regularizers, self.sample_eps)
        self.learning_rate = trainer.learning_rate  # a function of the config only
        self.images = torch.from_numpy(np.asarray(backend.to_numpy(trainer.images))).to(self.device)
        self.stream = MinibatchStream(len(self.images), c.batch_size, c.seed)
        self.stream.load_state_dict(trainer.stream.state_dict())
        self.noise = copy.deepcopy(trainer.noise)
        self.iteration = trainer.iteration
        self.g_batch_size = getattr(trainer, "g_batch_size", c.batch_size)  # the z of a G update (Trainer.sample_g_z)
        self.num_classes = getattr(c, "num_classes", 0)
        if self.num_classes:
            labels = np.asarray(backend.to_numpy(trainer.labels)).astype(np.int64)
            self.labels = torch.from_numpy(labels).to(self.device)
            self.label_noise = copy.deepcopy(trainer.label_noise)

    def synchronize(self):
        """Wait for the device (CUDA) to finish."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def real_batch(self):
        """The next real minibatch, NCHW float32 in [-1, 1]."""
        return self.real_labelled_batch()[0]

    def real_labelled_batch(self):
        """The next real minibatch and its labels (a LongTensor, or None for an unconditional trainer)."""
        idx = self.torch.from_numpy(self.stream.next_indices()).to(self.device)
        # x = pixel / 127.5 - 1
        return self.images[idx].float() / 127.5 - 1, (self.labels[idx] if self.num_classes else None)

    def sample_y(self, n):
        """n classes for G from the trainer's label stream (as ``Trainer.sample_y``), a LongTensor (None: unconditional)."""
        if not self.num_classes:
            return None
        from npsn.gan.trainer import sample_labels

        y = sample_labels(self.label_noise, n, self.num_classes).astype(np.int64)
        return self.torch.from_numpy(y).to(self.device)

    def sample_eps(self, n):
        """The gradient penalty's n epsilons from the trainer's ``penalty_noise`` stream (as ``Trainer.sample_eps``)."""
        return self.penalty_noise.uniform(0.0, 1.0, n).astype(np.float32)

    def sample_z(self, n):
        """n noise vectors from the trainer's generator (drawn on the host, as npsn does)."""
        z = self.noise.standard_normal((n, self.config.z_dim)).astype(np.float32)
        return self.torch.from_numpy(z).to(self.device)

    def d_step(self):
        """One D update (:func:`npsn.gan.updates.discriminator_update`); returns the 0-d loss tensor."""
        torch, b = self.torch, self.config.batch_size
        x_real, y_real = self.real_labelled_batch()
        z = self.sample_z(b)
        y_fake = self.sample_y(b)
        with torch.no_grad():
            x_fake = self.G(z) if y_fake is None else self.G(z, y_fake)
        labels = None if y_fake is None else torch.cat([y_real, y_fake])
        loss = self.method.objective(self.d_loss, x_real, x_fake, labels)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self.method.after_step()
        return loss.detach()

    def g_step(self):
        """One G update through a frozen D (:func:`npsn.gan.updates.generator_update`); returns the loss."""
        z = self.sample_z(self.g_batch_size)
        y = self.sample_y(self.g_batch_size)
        x_fake = self.G(z) if y is None else self.G(z, y)
        self.D.requires_grad_(False)
        try:
            loss = self.g_loss(self.D(x_fake) if y is None else self.D(x_fake, y))
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            self.D.requires_grad_(True)
        self.opt_g.step()
        return loss.detach()

    def train_iteration(self):
        """``n_dis`` D updates, then one G update; returns host floats (loss_d, loss_g)."""
        lr = self.learning_rate(self.iteration)
        for group in self.opt_d.param_groups + self.opt_g.param_groups:
            group["lr"] = lr
        for _ in range(self.config.n_dis):
            loss_d = self.d_step()
        loss_g = self.g_step()
        self.iteration += 1
        loss_d, loss_g = self.torch.stack([loss_d, loss_g]).tolist()  # one device-to-host copy, as the Trainer
        if not (np.isfinite(loss_d) and np.isfinite(loss_g)):
            raise RuntimeError(f"torch: non-finite loss at iteration {self.iteration}")
        return loss_d, loss_g


def compare_training(trainer, torch_trainer, x, z, iterations=2, y=None):
    """Whether an npsn Trainer and its :class:`TorchTrainer` compute the same, from the same state.

    Args:
        trainer, torch_trainer: holding the same weights (``TorchTrainer(trainer)`` before either trained).
        x, z: a fixed batch of images (N, 3, 32, 32) and noise (N, z_dim), float32 NumPy.
        iterations: training iterations run on each side.
        y: labels (N,) int32 NumPy for a class-conditional trainer (:func:`compare_gan`'s ``y``).
    Returns:
        ``{"max_rel_error_float64": {...}, "max_rel_error_float32": {...}, "losses": {"npsn": [[d, g], ...],
        "torch": [...]}, "loss_error": e, "ok": bool}``: the two dicts of :func:`compare_gan`; each
        side's losses over ``iterations`` training iterations (with the same batches), and their
        max |difference| / max(|torch's loss|, 1); ``ok`` when float64 errors are below
        :data:`TOLERANCE_FLOAT64`, float32 ones (but D's input gradient) below
        :data:`TOLERANCE_FLOAT32` and the loss error below :data:`TOLERANCE_LOSSES`.

    Parameters are not compared after training: biases that feed a BatchNorm have an exact
    gradient of 0, and Adam's first step moves them by about lr in the direction of the rounding noise.
    """
    errors = compare_gan(trainer.G, trainer.D, x, z, torch_trainer.G, torch_trainer.D, y=y)
    float64, float32 = errors["float64"], errors["float32"]
    losses = {"npsn": [list(trainer.train_iteration()) for _ in range(iterations)],
              "torch": [list(torch_trainer.train_iteration()) for _ in range(iterations)]}
    loss_error = max(abs(a - b) / max(abs(b), 1.0) for pair in zip(*losses.values()) for a, b in zip(*pair))
    ok = (max(float64.values()) < TOLERANCE_FLOAT64
          and all(error < TOLERANCE_FLOAT32 for name, error in float32.items() if name != "d_input_grad")
          and loss_error < TOLERANCE_LOSSES)
    return {"max_rel_error_float64": float64, "max_rel_error_float32": float32, "losses": losses,
            "loss_error": loss_error, "ok": ok}
