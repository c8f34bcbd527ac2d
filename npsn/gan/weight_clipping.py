"""Weight clipping (Arjovsky et al. 2017's WGAN; the "weight clipping" D of Miyato et al. 2018, Sec. 4)."""
from npsn.backend import elementwise, get_array_module
from npsn.gan.updates import DiscriminatorRegularizer

#: c of the paper's comparison ("c = 0.01 for the convolutional weight of each layer").
PAPER_CLIP = 0.01


@elementwise
def _clip(w, c, minus_c):
    r"""\min(\max(w, -c), c); -c computed on the host."""
    xp = get_array_module(w)
    return xp.minimum(xp.maximum(w, minus_c), c)


class WeightClipping(DiscriminatorRegularizer):
    """After each D update, every layer's weight is clipped to [-c, c], in place.

    Args:
        weights: the Parameters clipped (every layer's weight of D, as the paper's "convolutional weight of
            each layer" and the dense layer's: :func:`npsn.gan.methods.layer_weights`); the biases are not.
        c: the bound.

    A projection after the optimizer step, not a term of the objective: its ``after_step`` clips, and it
    has no penalty. The weights stay views of the optimizer's flat buffer (the kernel writes into them).
    """

    def __init__(self, weights, c=PAPER_CLIP):
        self.weights, self.c = list(weights), c

    def after_step(self, D):
        for p in self.weights:
            # W <- clip(W, -c, c)
            _clip(p.data, self.c, -self.c, out=p.data)
