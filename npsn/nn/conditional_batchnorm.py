"""Categorical conditional batch normalization: batch statistics shared by all classes, gamma and beta per class.

The generator's layer of class-conditional SN-GANs (de Vries et al. 2017; Miyato & Koyama 2018),
as the authors' ``CategoricalConditionalBatchNormalization`` (pfnet-research/sngan_projection,
source/links/categorical_conditional_batch_normalization.py).
"""
import numpy as np

from npsn.backend import elementwise
from npsn.nn.batchnorm import BatchNorm1d, BatchNorm2d
from npsn.nn.embedding import one_hot
from npsn.nn.module import Parameter


@elementwise
def _class_affine(x_hat, gamma, beta):
    r"""y = \gamma_{y_n} \hat x + \beta_{y_n} (gamma, beta: the rows of sample n's class, broadcast over positions)."""
    return gamma * x_hat + beta


@elementwise
def _product(a, b):
    r"""a b, elementwise (with broadcasting)."""
    return a * b


class _CategoricalConditionalBatchNorm:
    r"""Normalize each channel with the batch statistics, then scale and shift with the sample's class's gamma and beta.

    With x_hat the output of BatchNorm without affine parameters (:class:`~npsn.nn.batchnorm.BatchNorm2d`'s
    math, reused by subclassing: same batch statistics over all samples whatever their class, same
    running statistics, eval mode with the running statistics), and labels y (N,) in [0, K):

    .. math:: y_{n,\dots,c} = \Gamma_{y_n, c}\, \hat x_{n,\dots,c} + B_{y_n, c},

    where Gamma, B (K, C) hold one gamma and one beta per class (the authors' two ``EmbedID``
    tables ``gammas``, ``betas``, initialized to ones and zeros: at the start every class is plain BN).

    Backward, with G = dL/dy and Y the one-hot labels (N, K); S sums over positions (for the 2-d
    layer, over H and W; the 1-d layer has none):

    .. math::
        \frac{\partial L}{\partial \Gamma} = Y^T\, S(G \hat x), \qquad
        \frac{\partial L}{\partial B} = Y^T\, S(G), \qquad
        \frac{\partial L}{\partial \hat x} = G\, \Gamma_{y_n},

    i.e. dL/dgamma_k = sum over the samples of class k (and their positions) of G x_hat, as a matrix
    product with the one-hot labels; then dL/dx is BatchNorm's input gradient without affine
    parameters, applied to dL/dx_hat (BatchNorm's own backward, in training or in eval mode).

    Parameters and buffers, the layout of a PyTorch conditional BN that keeps an ``nn.BatchNorm2d(C,
    affine=False)`` and two (K, C) tables: ``weight`` (K, C) (Gamma, ones), ``bias`` (K, C) (B,
    zeros), ``running_mean`` (C,), ``running_var`` (C,), ``num_batches_tracked`` (int64 scalar).
    Differences from the authors': PyTorch's running statistics (momentum 0.1 = Chainer's decay 0.9;
    ``running_var`` starts at ones where the authors' ``avg_var`` starts at zeros, which matters only
    for eval mode in the first iterations) and eps 1e-5 (Chainer's 2e-5), as npsn's BatchNorm.

    **Invariant between calls**: as BatchNorm's; the labels of a forward are kept (one-hot) in its
    cache for the matching backward only.
    """

    takes_labels = True

    def __init__(self, num_features, num_classes, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.num_classes = num_classes
        self.weight = Parameter(np.ones((num_classes, num_features), dtype=np.float32))
        self.bias = Parameter(np.zeros((num_classes, num_features), dtype=np.float32))

    def forward(self, x, labels):
        # x_hat: BatchNorm's normalization (affine=False), its cache kept whole for its backward
        x_hat = super().forward(x)
        normalization = self.saved()
        # gamma_n = Gamma[y_n], beta_n = B[y_n], shaped to broadcast over the positions of sample n
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        gamma = self.weight.data[labels].reshape(shape)
        beta = self.bias.data[labels].reshape(shape)
        self.save_for_backward(normalization=normalization, x_hat=x_hat, gamma=gamma,
                               one_hot=one_hot(labels, self.num_classes, x.dtype))
        # y = gamma_{y_n} x_hat + beta_{y_n}
        return _class_affine(x_hat, gamma, beta)

    def backward(self, grad_out):
        saved = self.saved()
        positions = tuple(range(1, grad_out.ndim - 1))  # the axes between the batch and the channels
        if self.weight.requires_grad:
            # dL/dGamma = Y^T S(G x_hat)
            self.weight.accumulate_grad(saved.one_hot.T @ _product(grad_out, saved.x_hat).sum(axis=positions))
        if self.bias.requires_grad:
            # dL/dB = Y^T S(G)
            self.bias.accumulate_grad(saved.one_hot.T @ grad_out.sum(axis=positions))
        # BatchNorm's backward (affine=False) from dL/dx_hat = G gamma_{y_n}, with its own forward's cache
        self.save_for_backward(**vars(saved.normalization))
        return super().backward(_product(grad_out, saved.gamma))

    def extra_repr(self):
        return f"{self.num_features}, num_classes={self.num_classes}, eps={self.eps}, momentum={self.momentum}"


class CategoricalConditionalBatchNorm1d(_CategoricalConditionalBatchNorm, BatchNorm1d):
    r"""Conditional BN of (N, C) features with labels (N,). See :class:`_CategoricalConditionalBatchNorm`.

    >>> import numpy as np, npsn
    >>> bn = npsn.CategoricalConditionalBatchNorm1d(2, num_classes=3)
    >>> bn.weight.shape, bn.bias.shape, bn.running_mean.shape
    ((3, 2), (3, 2), (2,))
    >>> x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    >>> bn.bias.data[1] = 5.0  # class 1's beta
    >>> out = bn(x, np.array([1, 0, 1, 2], dtype=np.int32))
    >>> np.round(out - npsn.BatchNorm1d(2)(x), 3) + 0.0  # samples 0 and 2 (class 1) are shifted by 5
    array([[5., 5.],
           [0., 0.],
           [5., 5.],
           [0., 0.]], dtype=float32)
    """


class CategoricalConditionalBatchNorm2d(_CategoricalConditionalBatchNorm, BatchNorm2d):
    r"""Conditional BN of channels-last images (N, H, W, C), labels (N,). See :class:`_CategoricalConditionalBatchNorm`.

    >>> import numpy as np, npsn
    >>> bn = npsn.CategoricalConditionalBatchNorm2d(4, num_classes=10)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    >>> bn(x, np.array([7, 3], dtype=np.int32)).shape
    (2, 3, 3, 4)
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """
