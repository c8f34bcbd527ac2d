"""A learned bias per feature, alone: the beta of a normalization without its gamma."""
import numpy as np

from npsn.backend import elementwise
from npsn.nn.module import Module, Parameter


@elementwise
def _plus(x, b):
    r"""x + b, elementwise (b broadcast over the leading axes)."""
    return x + b


class Bias(Module):
    r"""y = x + b, with b (C,) added along the last axis (the channels of a channels-last image, or the features).

    The cnn discriminator's BatchNorm and LayerNorm variants normalize without affine parameters and
    keep only this shift (the paper drops the gain gamma, not beta).

    Backward: dL/dx = G, dL/db = the sum of G over every axis but the last.

    Parameters: ``bias`` (C,), zeros.
    """

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features
        self.bias = Parameter(np.zeros(num_features, dtype=np.float32))

    def forward(self, x):
        self.save_for_backward()  # nothing to keep: marks the forward that a backward consumes
        # y = x + b
        return _plus(x, self.bias.data)

    def backward(self, grad_out):
        self.saved()
        if self.bias.requires_grad:
            # dL/db = sum of G over all but the last axis
            self.bias.accumulate_grad(grad_out.sum(axis=tuple(range(grad_out.ndim - 1))))
        # dL/dx = G
        return grad_out

    def extra_repr(self):
        return f"{self.num_features}"
