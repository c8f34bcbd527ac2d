"""Numerically stable elementwise functions shared by layers and losses (softplus, sigmoid)."""
from npsn.backend import get_array_module


def softplus(x):
    r"""softplus(x) = log(1 + exp(x)), without overflow for logits of any size.

    Args:
        x: array of any shape (floating dtype).
    Returns:
        array of ``x``'s shape and dtype.

    .. math::
        \log(1 + e^x) = \max(x, 0) + \log(1 + e^{-|x|})

    (for x >= 0 factor out e^x; for x < 0 it is the identity). ``exp(-|x|)`` lies in (0, 1]
    so it cannot overflow; for |x| beyond ~745 (float64) or ~104 (float32) it underflows
    to 0, which is the correctly rounded answer (NumPy's default error state ignores
    underflow), and softplus(x) becomes exactly max(x, 0).
    """
    xp = get_array_module(x)
    # log(1 + e^x) = max(x, 0) + log1p(e^{-|x|})
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def sigmoid(x):
    r"""sigmoid(x) = 1 / (1 + exp(-x)) = d softplus(x) / dx, without overflow.

    Args:
        x: array of any shape (floating dtype).
    Returns:
        array of ``x``'s shape and dtype, in [0, 1].

    .. math::
        \sigma(x) = \frac{1}{1 + e^{-|x|}} \ (x \ge 0), \qquad
        \sigma(x) = \frac{e^{-|x|}}{1 + e^{-|x|}} \ (x < 0)

    Both forms only ever exponentiate -|x| <= 0, so nothing overflows; the x < 0 form
    keeps full relative precision for very negative x (where 1 - sigma(-x) would cancel).
    """
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    # sigma(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0, with e = exp(-|x|)
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
