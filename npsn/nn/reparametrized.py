"""The wrapper protocol of spectral and weight normalization: a layer that computes with a function of its weight."""
from contextlib import nullcontext

from npsn.nn.module import Module, Parameter, create_graph, input_grad


class ReparametrizedWeight(Module):
    r"""Wrap a layer so that it computes with W' = f(W), a function of its weight W, and differentiate through f.

    The wrapped layer is a :class:`~npsn.nn.module.WeightLayer` (Linear, Conv2d, ConvTranspose2d, Embedding):
    it has a ``weight`` Parameter and the explicit-weight pair ``forward_with(x, W')`` /
    ``backward_with(G) -> (dL/dx, dL/dW')`` (and ``double_backward_with`` for the gradient penalty).
    A subclass's ``forward`` computes W' from W, caches what :meth:`weight_backward` needs and returns
    ``self.module.forward_with(x, W')``; :meth:`weight_backward` maps dL/dW' to dL/dW (the chain rule
    through f). Backward and double backward are written here, once:

    .. math::
        \frac{\partial L}{\partial W} = \Big(\frac{\partial W'}{\partial W}\Big)^T \frac{\partial L}{\partial W'},

    the same map for a loss P of the input gradient (the layer's ``double_backward_with`` gives dP/dW',
    :meth:`weight_backward` turns it into dP/dW): f depends on W alone, never on the input, so the
    reparametrization adds no second-order term of its own.

    Parameters: W under ``weight_name`` (PyTorch's name: ``weight_orig`` for spectral norm, ``weight_v`` for
    weight norm), then the layer's others (``bias``). The layer's ``weight`` *is* that Parameter (it always
    holds W, never W'); the layer is held outside the module tree, so names have no ``module.`` prefix.
    """

    def __init__(self, layer, weight_name):
        super().__init__()
        if not isinstance(getattr(layer, "weight", None), Parameter):
            raise TypeError(f"{type(self).__name__} needs a layer with a `weight` Parameter, got {type(layer).__name__}")
        # Not a child module: its parameters are registered here under PyTorch's names, so the layer is put in
        # __dict__ directly, bypassing Module.__setattr__'s registration.
        self.__dict__["module"] = layer
        self.__dict__["weight_name"] = weight_name
        setattr(self, weight_name, layer.weight)
        for name, p in layer._parameters.items():
            if name != "weight" and p is not None:
                setattr(self, name, p)

    def weight_backward(self, saved, grad_weight):
        """dL/dW from dL/dW' (``grad_weight``), with ``saved`` the cache of the forward that computed W'."""
        raise NotImplementedError

    def _wrapped(self):
        """The wrapped layer's context in a backward: it keeps its cache when this wrapper does."""
        return create_graph(self.module) if self.creates_graph else nullcontext()

    def backward(self, grad_out):
        saved = self.saved()
        with input_grad(self.module, self.needs_input_grad), self._wrapped():
            grad_in, grad_weight = self.module.backward_with(grad_out)
        if grad_weight is not None:  # None when W.requires_grad is False
            self._parameters[self.weight_name].accumulate_grad(self.weight_backward(saved, grad_weight))
        return grad_in

    def double_backward(self, grad_grad_in):
        saved = self.saved()
        grad_grad_out, grad_weight = self.module.double_backward_with(grad_grad_in)
        if grad_weight is not None:
            self._parameters[self.weight_name].accumulate_grad(self.weight_backward(saved, grad_weight))
        return grad_grad_out

    def train(self, mode=True):
        super().train(mode)
        self.module.train(mode)
        return self
