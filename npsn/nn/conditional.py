r"""Containers whose layers may take class labels, and the projection discriminator's output layer.

A layer *takes labels* when its class says ``takes_labels = True``: it is called ``layer(x, y)``
(labels y: integers (N,)) and keeps what its backward needs of y in its own forward's cache, so
its ``backward(grad_out)`` has the usual signature and nothing about labels outlives a
forward/backward pair. The containers pass y to such layers and call every other layer as usual:

* :class:`ConditionalSequential`: ``Sequential`` with y handed to the layers that take it;
* :class:`ConditionalResidual`: ``Residual`` with y handed to both branches' containers;
* :class:`Projection`: D's output ``psi(h) + <embed(y), h>`` (Miyato & Koyama, ICLR 2018).

Gradients never flow into labels: the backward passes are those of the unconditional containers.
"""
from npsn.backend import get_array_module
from npsn.nn.module import Module, Sequential, input_grad
from npsn.nn.residual import Residual


def _call(layer, x, labels):
    """``layer(x, labels)`` for a layer that takes labels, else ``layer(x)``."""
    return layer(x, labels) if getattr(layer, "takes_labels", False) else layer(x)


class ConditionalSequential(Sequential):
    """Modules applied in order, the labels handed to those that take them; backward is Sequential's.

    Args:
        *layers: the modules (children named "0", "1", ... as in Sequential).
        num_classes: K, kept as the attribute ``num_classes`` (a model's number of classes).

    Shapes: ``forward(x, y)``: x as the first layer takes it, y (N,) integer labels in [0, K).

    >>> import numpy as np, npsn
    >>> net = npsn.ConditionalSequential(npsn.Linear(3, 4), npsn.CategoricalConditionalBatchNorm1d(4, 2), npsn.ReLU(),
    ...                                  num_classes=2)
    >>> out = net(np.ones((5, 3), np.float32), np.array([0, 1, 1, 0, 1], np.int32))
    >>> net.backward(np.ones_like(out)).shape
    (5, 3)
    """

    takes_labels = True

    def __init__(self, *layers, num_classes=0):
        super().__init__(*layers)
        self.num_classes = num_classes

    def forward(self, x, labels):
        for layer in self._modules.values():
            x = _call(layer, x, labels)
        return x


class ConditionalResidual(Residual):
    r"""y = residual(x, labels) + shortcut(x, labels): Residual whose branches may take labels.

    Backward is :class:`~npsn.nn.residual.Residual`'s (the input gradients of the two branches add).
    """

    takes_labels = True

    def forward(self, x, labels):
        skip = x if self.shortcut is None else _call(self.shortcut, x, labels)
        return _call(self.residual, x, labels) + skip


class Projection(Module):
    r"""The projection discriminator's output: logit = psi(h) + <e_y, h>, with e_y = embedding(y).

    Args:
        linear: psi, a (spectral-normalized) Linear(D, 1) on the features.
        embedding: a (spectral-normalized) Embedding(K, D): the class vectors e_k.

    Shapes: h (N, D) features phi(x) -> logits (N, 1); labels y (N,).

    .. math:: \text{logit}_n = \psi(h_n) + \langle e_{y_n}, h_n \rangle

    (the authors' ``output = l5(h) + F.sum(l_y(y) * h, axis=1, keepdims=True)``). Backward, with
    G = dL/dlogit (N, 1):

    .. math:: \frac{\partial L}{\partial h_n} = \frac{\partial L}{\partial h_n}\Big|_\psi + G_n e_{y_n},
              \qquad \frac{\partial L}{\partial e_{y_n}} = G_n h_n ,

    the second passed to the embedding's backward (which sums it per class into dL/dW). Children
    are named ``linear`` and ``embedding`` (``linear.weight_orig``, ``embedding.weight_orig``, ...).

    >>> import numpy as np, npsn
    >>> proj = npsn.Projection(npsn.Linear(4, 1, bias=False), npsn.Embedding(3, 4))
    >>> h = np.ones((2, 4), np.float32)
    >>> logits = proj(h, np.array([0, 2], np.int32))
    >>> bool(np.allclose(logits[:, 0], proj.linear(h)[:, 0] + proj.embedding.weight.data[[0, 2]].sum(axis=1)))
    True
    """

    takes_labels = True

    def __init__(self, linear, embedding):
        super().__init__()
        self.linear = linear
        self.embedding = embedding

    def forward(self, h, labels):
        xp = get_array_module(h)
        # e_{y_n}
        embedded = self.embedding(labels)
        self.save_for_backward(h=h, embedded=embedded)
        # logit_n = psi(h_n) + <e_{y_n}, h_n>
        return self.linear(h) + xp.sum(embedded * h, axis=1, keepdims=True)

    def backward(self, grad_out):
        saved = self.saved()
        # dL/de_{y_n} = G_n h_n   (the embedding's backward gives no label gradient)
        self.embedding.backward(grad_out * saved.h)
        with input_grad(self.linear, self.needs_input_grad):
            grad_linear = self.linear.backward(grad_out)
        if not self.needs_input_grad:
            return None
        # dL/dh_n = psi's input gradient + G_n e_{y_n}
        return grad_linear + grad_out * saved.embedded
