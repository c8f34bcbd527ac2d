"""Fully connected layer."""
from npsn.nn import init
from npsn.nn.module import Module, Parameter


class Linear(Module):
    """y = x W^T + b, PyTorch's ``nn.Linear``.

    Args:
        in_features, out_features: sizes of x's and y's last axis.
        bias: whether to learn b.
        rng: NumPy generator for the initial values (default: ``npsn.nn.init``'s seeded one).

    Parameters (PyTorch's layout): ``weight`` (out_features, in_features), ``bias`` (out_features,),
    both initialized U(-1/sqrt(in), 1/sqrt(in)) like PyTorch.

    Shapes: x (N, in_features) -> y (N, out_features).

    Backward, with G = dL/dy (N, out):

    .. math::
        \\frac{\\partial L}{\\partial x} = G W, \\qquad
        \\frac{\\partial L}{\\partial W} = G^T x, \\qquad
        \\frac{\\partial L}{\\partial b} = \\textstyle\\sum_n G_n .
    """

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight, bound = init.torch_default((out_features, in_features), rng)
        self.weight = Parameter(weight)
        self.bias = Parameter(init.uniform((out_features,), bound, rng)) if bias else None

    def forward(self, x):
        self.save_for_backward(x=x)
        # y = x W^T + b
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad_out):
        x = self.saved().x
        if self.weight.requires_grad:
            # dL/dW = G^T x
            self.weight.accumulate_grad(grad_out.T @ x)
        if self.bias is not None and self.bias.requires_grad:
            # dL/db = sum_n G_n
            self.bias.accumulate_grad(grad_out.sum(axis=0))
        if not self.needs_input_grad:
            return None
        # dL/dx = G W
        return grad_out @ self.weight.data

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
