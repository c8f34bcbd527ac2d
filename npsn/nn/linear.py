"""Fully connected layer."""
from npsn.nn import init
from npsn.nn.module import Parameter, WeightLayer


class Linear(WeightLayer):
    r"""y = x W^T + b, PyTorch's ``nn.Linear``.

    Args:
        in_features, out_features: sizes of x's and y's last axis.
        bias: whether to learn b.
        rng: NumPy generator for the initial values (default: ``npsn.nn.init``'s seeded one).

    Parameters (PyTorch's layout): ``weight`` (out_features, in_features), ``bias`` (out_features,),
    both initialized U(-1/sqrt(in), 1/sqrt(in)) like PyTorch.

    Shapes: x (N, in_features) -> y (N, out_features).

    Backward, with G = dL/dy (N, out):

    .. math::
        \frac{\partial L}{\partial x} = G W, \qquad
        \frac{\partial L}{\partial W} = G^T x, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_n G_n .

    Double backward (a loss P of dL/dx, R = dP/d(dL/dx)): since <R, G W> = <G, R W^T>,
    dP/dG = R W^T and dP/dW = G^T R; b does not enter dL/dx.

    The map is computed by :meth:`forward_with` / :meth:`backward_with` for any weight array W;
    ``forward`` and ``backward`` use ``self.weight`` (:class:`~npsn.nn.spectral_norm.SpectralNorm`
    passes W / sigma instead).
    """

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight, bound = init.torch_default((out_features, in_features), rng)
        self.weight = Parameter(weight)
        self.bias = Parameter(init.uniform((out_features,), bound, rng)) if bias else None

    def forward_with(self, x, weight):
        """y = x W^T + b with W = ``weight`` (shaped as ``self.weight``) and this layer's b."""
        self.save_for_backward(x=x, W=weight)
        # y = x W^T + b
        y = x @ weight.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward_with(self, grad_out):
        """``(dL/dx, dL/dW)`` for the W of the last :meth:`forward_with`; adds dL/db into ``bias.grad``.

        dL/dx is None when ``needs_input_grad`` is False, dL/dW when ``weight.requires_grad`` is.
        """
        saved = self.saved()
        self.save_for_double_backward(grad_out=grad_out)
        if self.bias is not None and self.bias.requires_grad:
            # dL/db = sum_n G_n
            self.bias.accumulate_grad(grad_out.sum(axis=0))
        # dL/dW = G^T x
        grad_weight = grad_out.T @ saved.x if self.weight.requires_grad else None
        # dL/dx = G W
        grad_in = grad_out @ saved.W if self.needs_input_grad else None
        return grad_in, grad_weight

    def double_backward_with(self, grad_grad_in):
        """``(dP/dG, dP/dW)`` for a loss P of dL/dx = G W (see :meth:`WeightLayer.double_backward_with`): R W^T and G^T R."""
        saved = self.saved()
        R, G = grad_grad_in, saved.grad_out
        # dP/dW = G^T R   (<R, G W> = <G, R W^T> is bilinear in G and W)
        grad_weight = G.T @ R if self.weight.requires_grad else None
        # dP/dG = R W^T, the forward map without bias
        return R @ saved.W.T, grad_weight

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
