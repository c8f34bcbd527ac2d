r"""Orthonormal regularization of the discriminator's weights (Brock et al. 2016; the paper's "orthonormal" D).

Miyato et al. (2018, Sec. 4) initialize each weight of D to a random orthonormal operator
(:func:`npsn.nn.init.orthogonal`) and add to D's objective Brock et al.'s penalty on every weight,

.. math:: \beta \sum_l \|W_l^T W_l - I\|_F^2,

W_l the weight as an (h, w) matrix (a convolution's (out, in k k)). It pulls all singular values
toward 1, where spectral normalization fixes only the largest one.

**The value used.** With the singular values s_i of W (min(h, w) of them), ||W^T W - I||_F^2 =
sum_i (s_i^2 - 1)^2 + max(w - h, 0): a wide matrix (h < w, every layer of the cnn D but the first)
cannot reach W^T W = I, and its w - h missing singular values add a constant. npsn computes the
penalty on the smaller Gram matrix, P = ||W W^T - I||_F^2 for h <= w and ||W^T W - I||_F^2 otherwise,
= sum_i (s_i^2 - 1)^2: zero exactly at an orthonormal operator, and the same gradient (a constant
has none). **The gradient**, from d||E||^2 = 2 <E, dE> with E = W^T W - I symmetric and
dE = dW^T W + W^T dW:

.. math:: \frac{\partial}{\partial W} \|W^T W - I\|_F^2 = 4\, W (W^T W - I) = 4\, (W W^T - I)\, W,

the two forms equal (W W^T W - W either way); each is computed with the smaller Gram matrix.

**The coefficient**, beta = :data:`ORTHONORMAL_COEFFICIENT` = 0.01. Neither paper's text gives the value
used. npsn chooses it so that the penalty acts as a soft version of the constraint: if every singular
value of W is 1 + delta, the penalty's gradient has norm about 8 beta delta sqrt(min(h, w)), while D's own
loss pulls with ||dL/dW||. Measured at initialization (the cnn D at full width, orthonormal weights, the
non-saturating loss on 64 CIFAR-10 images and 64 of G's), the two balance for the seven convolutions at
delta = 6 to 13 % with beta = 0.01: the penalty then keeps each spectrum within about ten percent of 1
against the loss. A hundred times smaller (BigGAN's 1e-4 for its own variant of the penalty) would let
the singular values drift by more than 100 % before the penalty pulled as hard as the loss, i.e. leave
only the orthonormal initialization; a hundred times larger would pin them to 1 almost exactly. (The
final 1 x 8192 layer, whose only singular value is ||w||, is held more loosely: its loss gradient is
relatively larger.)
"""
from npsn.backend import get_array_module
from npsn.gan.updates import DiscriminatorRegularizer
from npsn.nn.spectral_norm import reshape_weight_to_matrix

#: beta, the weight of the orthonormal penalty in D's objective (the choice: see the module docstring).
ORTHONORMAL_COEFFICIENT = 0.01


def orthonormal_penalty(weight):
    """``(P, dP/dW)``: P = sum_i (s_i^2 - 1)^2 = ||W^T W - I||_F^2 less its constant, and 4 W (W^T W - I), in W's shape.

    ``weight`` is reshaped to its (out, rest) matrix W (:func:`~npsn.nn.spectral_norm.reshape_weight_to_matrix`).
    """
    xp = get_array_module(weight)
    W = reshape_weight_to_matrix(weight)
    h, w = W.shape
    wide = h <= w
    # the smaller Gram matrix: W W^T (h, h) for a wide W, W^T W (w, w) for a tall one
    gram = W @ W.T if wide else W.T @ W
    # E = Gram - I
    E = gram - xp.eye(gram.shape[0], dtype=gram.dtype)
    # P = ||E||_F^2
    value = (E * E).sum()
    # dP/dW = 4 (W W^T - I) W = 4 W (W^T W - I)
    grad = (E @ W if wide else W @ E) * 4
    return value, grad.reshape(weight.shape)


class OrthonormalRegularization(DiscriminatorRegularizer):
    """beta sum_l ||W_l^T W_l - I||_F^2 as a part of the D update (:class:`~npsn.gan.updates.DiscriminatorRegularizer`).

    Args:
        weights: the Parameters penalized (every layer's weight of D: :func:`npsn.gan.methods.layer_weights`).
        coefficient: beta.

    Its ``penalty`` adds beta dP/dW into each weight's ``.grad`` and returns beta P (the inputs are not used).
    """

    def __init__(self, weights, coefficient=ORTHONORMAL_COEFFICIENT):
        self.weights, self.coefficient = list(weights), coefficient

    def penalty(self, D, x_real, x_fake):
        total = 0
        for p in self.weights:
            value, grad = orthonormal_penalty(p.data)
            if p.requires_grad:
                # d(beta P)/dW = beta 4 W (W^T W - I)
                p.accumulate_grad(grad * self.coefficient)
            total = total + value
        # beta sum_l P_l
        return total * self.coefficient
