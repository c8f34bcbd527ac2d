r"""Synchronized batch normalization: BatchNorm's statistics over the global batch of all data-parallel ranks.

Each rank holds a disjoint slice of the global batch. :class:`SyncBatchNorm2d` (and
:class:`SyncBatchNorm1d`) compute BatchNorm's forward and backward with the per-channel sums
taken over every rank's slice (one allreduce each), so R ranks compute what one process computes
on the concatenated batch. :func:`convert_sync_batchnorm` turns a model's BatchNorm layers into
synchronized ones in place (PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``); parameters,
buffers and ``state_dict`` names are unchanged, so checkpoints load either way. The class-conditional
generator's :mod:`~npsn.nn.conditional_batchnorm` layers have synchronized twins too
(:class:`SyncCategoricalConditionalBatchNorm2d`, ``1d``), which the conversion uses.
"""
from npsn.backend import get_array_module
from npsn.nn.batchnorm import BatchNorm1d, BatchNorm2d, _deviation
from npsn.nn.conditional_batchnorm import (CategoricalConditionalBatchNorm1d, CategoricalConditionalBatchNorm2d,
                                           _CategoricalConditionalBatchNorm)


class _SyncBatchNorm:
    r"""BatchNorm whose batch statistics and backward sums cover the global batch of ``comm``'s ranks.

    Notation: rank r holds x_r, M_r values per channel; the global batch is their concatenation,
    M = \sum_r M_r values per channel. **Contract:** every rank has the same M_r (the data-parallel
    trainer's equal slices), so M = R M_r needs no communication; every rank calls forward and
    backward in the same order (each is a collective).

    Forward in training mode (the same formulas as :class:`~npsn.nn.batchnorm.BatchNorm2d` with
    sums over all ranks, two allreduces of C values):

    .. math::
        \mu = \tfrac1M \textstyle\sum_r \sum x_r, \qquad
        \sigma^2 = \tfrac1M \sum_r \sum (x_r - \mu)^2, \qquad
        \hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon}, \quad y = \gamma \hat x + \beta .

    The variance is the *centered* sum, reduced after the mean is known, not E[x^2] - mu^2 from
    one allreduce of (sum x, sum x^2): the latter cancels catastrophically when |mu| >> sigma (in
    float32 a channel with mean 100 and standard deviation 0.1 keeps no correct digit), while the
    centered sum is BatchNorm's own formula, so one rank and R ranks agree to rounding. The price
    is a second allreduce of C values, pure latency (microseconds on NVLink or InfiniBand) next
    to the layer's work. Running statistics are updated exactly as BatchNorm's, from the global
    mu and sigma^2 (identical on every rank).

    Backward. Let L = \tfrac1R \sum_r L_r, where L_r is rank r's loss (the mean over its own
    slice), and G_r = dL_r/dy_r the gradient rank r receives. BatchNorm's input gradient of the
    global batch, with G = G_r / R on rank r's rows, is

    .. math::
        \frac{\partial L}{\partial x_r} = \frac1R \cdot \frac{\gamma}{M\sqrt{\sigma^2+\epsilon}}
            \Big(M G_r - \textstyle\sum_{r'} \sum G_{r'} - \hat x_r \sum_{r'} \sum G_{r'} \hat x_{r'}\Big)

    because mu and sigma^2 depend on every rank's x (the two global sums are the only coupling).
    Each rank returns the bracket term with the sums allreduced (one allreduce of 2C values:
    sum G and sum G x_hat), i.e. R times its share; the factor 1/R is applied where the
    data-parallel optimizer averages the parameter gradients over ranks (a mean allreduce), so
    the averaged gradients are exactly the one-process ones. For the same reason the parameter
    gradients are the *local* sums, dL_r/dgamma = sum G_r x_hat_r and dL_r/dbeta = sum G_r: their
    mean over ranks is (1/R) sum_r sum G_r x_hat_r = sum G x_hat, BatchNorm's dL/dgamma of the
    global batch. With one rank everything reduces to BatchNorm. Eval mode uses the running
    statistics and communicates nothing.

    Invariant between calls: as BatchNorm (the cache of the last forward until its backward);
    ``comm`` is the communicator every rank of the group shares.
    """

    def _init_comm(self, comm):
        self.comm = comm

    def batch_statistics(self, x, axes):
        r"""(M, \mu, x_r - \mu, \sigma^2) of the global batch, from this rank's slice x_r (two allreduces of C values)."""
        # M = R M_r, the values per channel of the global batch
        count = (x.size // x.shape[-1]) * self.comm.size
        # mu = 1/M sum_r sum x_r
        mean = self.comm.allreduce(x.sum(axis=axes), "sum") / count
        # x - mu, and (x - mu)^2
        centered, squared = _deviation(x, mean)
        # sigma^2 = 1/M sum_r sum (x_r - mu)^2   (the biased variance)
        var = self.comm.allreduce(squared.sum(axis=axes), "sum") / count
        return count, mean, centered, var

    def batch_sums(self, sum_g, sum_g_xhat, count):
        r"""(\sum_r \sum G_r, \sum_r \sum G_r \hat x_r, R M_r) from this rank's sums (one allreduce of 2C values).

        BatchNorm's backward has already accumulated this rank's local sums as dL_r/dgamma and
        dL_r/dbeta (the optimizer's mean over ranks completes them); the reduction works on a new
        buffer, so those gradients keep their local values.
        """
        xp = get_array_module(sum_g)
        c = sum_g.shape[-1]
        # sum_r' sum G_r' and sum_r' sum G_r' x_hat_r', side by side in one buffer
        sums = self.comm.allreduce(xp.concatenate([sum_g, sum_g_xhat]), "sum")
        return sums[:c], sums[c:], count * self.comm.size

    def extra_repr(self):
        return super().extra_repr() + f", ranks={self.comm.size}"


class SyncBatchNorm1d(_SyncBatchNorm, BatchNorm1d):
    """BatchNorm1d over the global batch of ``comm``'s ranks: (N, C) per rank. See :class:`_SyncBatchNorm`.

    >>> import numpy as np
    >>> from npsn.distributed.comm import SingleProcess
    >>> bn = SyncBatchNorm1d(3, SingleProcess())
    >>> y = bn(np.arange(12.0).reshape(4, 3))
    >>> np.allclose(y.mean(axis=0), 0), bn.comm.size
    (True, 1)
    """

    def __init__(self, num_features, comm, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(num_features, eps, momentum, affine)
        self._init_comm(comm)


class SyncBatchNorm2d(_SyncBatchNorm, BatchNorm2d):
    """BatchNorm2d over the global batch of ``comm``'s ranks: channels-last (N, H, W, C) per rank. See :class:`_SyncBatchNorm`."""

    def __init__(self, num_features, comm, eps=1e-5, momentum=0.1, affine=True):
        super().__init__(num_features, eps, momentum, affine)
        self._init_comm(comm)


class _SyncCategoricalConditionalBatchNorm(_CategoricalConditionalBatchNorm):
    r"""Conditional BN whose batch statistics cover the global batch of ``comm``'s ranks; gamma and beta per class.

    The two parents combine through the method resolution order, e.g. for the 2-d layer
    ``_CategoricalConditionalBatchNorm -> _SyncBatchNorm -> BatchNorm2d``: the conditional layer's
    ``super().forward(x)`` / ``super().backward(...)`` (its normalization without affine parameters)
    are :class:`_SyncBatchNorm`'s, so

    .. math:: y_{n,\dots,c} = \Gamma_{y_n, c}\, \hat x_{n,\dots,c} + B_{y_n, c}, \qquad
              \hat x = (x - \mu)/\sqrt{\sigma^2 + \epsilon},

    with mu and sigma^2 over the *global* batch (all classes, all ranks), the labels y_n of this
    rank's rows, and dL/dx the synchronized input gradient applied to dL/dx_hat = G Gamma_{y_n}.

    Why the per-class gradients are right: rank r accumulates its *local* sums
    dL_r/dGamma = Y_r^T S(G_r x_hat_r) and dL_r/dB = Y_r^T S(G_r) (the conditional layer's own
    backward), where x_hat_r is already normalized with the global statistics. With L = 1/R sum_r L_r,
    the one-process gradient of the global batch is dL/dGamma = Y^T S(G x_hat) with G = G_r / R on
    rank r's rows, i.e. 1/R sum_r Y_r^T S(G_r x_hat_r), a sum over the ranks' disjoint rows: exactly
    the mean over ranks that the data-parallel optimizer takes (as for :class:`_SyncBatchNorm`'s gamma
    and beta). A class absent from a rank's slice contributes a zero row there, as its rows contribute
    nothing to the one-process sum. With one rank everything reduces to the conditional layer.

    **Invariant between calls**: as the conditional layer's; ``comm`` is the group's communicator, and
    (the contract of :class:`_SyncBatchNorm`) every rank calls forward and backward in the same order.
    """

    def __init__(self, num_features, num_classes, comm, eps=1e-5, momentum=0.1):
        super().__init__(num_features, num_classes, eps=eps, momentum=momentum)
        self._init_comm(comm)

    def extra_repr(self):
        return super().extra_repr() + f", ranks={self.comm.size}"


class SyncCategoricalConditionalBatchNorm1d(_SyncCategoricalConditionalBatchNorm, _SyncBatchNorm, BatchNorm1d):
    """CategoricalConditionalBatchNorm1d over the global batch of ``comm``'s ranks: (N, C), labels (N,) per rank.

    See :class:`_SyncCategoricalConditionalBatchNorm`.

    >>> import numpy as np
    >>> from npsn.distributed.comm import SingleProcess
    >>> bn = SyncCategoricalConditionalBatchNorm1d(2, 3, SingleProcess())
    >>> x, y = np.arange(8.0).reshape(4, 2), np.array([1, 0, 1, 2])
    >>> bn.bias.data[1] = 5.0  # class 1's beta
    >>> plain = CategoricalConditionalBatchNorm1d(2, 3)
    >>> plain.bias.data[1] = 5.0
    >>> np.allclose(bn(x, y), plain(x, y)), [c.__name__ for c in type(bn).__mro__[1:4]]
    (True, ['_SyncCategoricalConditionalBatchNorm', '_CategoricalConditionalBatchNorm', '_SyncBatchNorm'])
    """


class SyncCategoricalConditionalBatchNorm2d(_SyncCategoricalConditionalBatchNorm, _SyncBatchNorm, BatchNorm2d):
    """CategoricalConditionalBatchNorm2d over the global batch of ``comm``'s ranks: (N, H, W, C), labels (N,) per rank.

    See :class:`_SyncCategoricalConditionalBatchNorm`.
    """


_SYNC_OF = {BatchNorm1d: SyncBatchNorm1d, BatchNorm2d: SyncBatchNorm2d,
            CategoricalConditionalBatchNorm1d: SyncCategoricalConditionalBatchNorm1d,
            CategoricalConditionalBatchNorm2d: SyncCategoricalConditionalBatchNorm2d}


def _synchronized(bn, comm):
    """A Sync twin of (conditional) BatchNorm ``bn`` that shares its Parameters and holds its buffers and mode."""
    if isinstance(bn, _CategoricalConditionalBatchNorm):
        sync = _SYNC_OF[type(bn)](bn.num_features, bn.num_classes, comm, bn.eps, bn.momentum)
    else:
        sync = _SYNC_OF[type(bn)](bn.num_features, comm, bn.eps, bn.momentum, bn.affine)
    if bn.weight is not None:  # affine BatchNorm's (C,), or the conditional layer's per-class (K, C)
        sync.weight, sync.bias = bn.weight, bn.bias
    for name, value in bn._buffers.items():
        setattr(sync, name, value)
    sync.train(bn.training)
    return sync


def convert_sync_batchnorm(module, comm):
    """Replace every BatchNorm1d/2d and CategoricalConditionalBatchNorm1d/2d inside ``module`` by its synchronized
    twin; returns the module.

    Children are replaced in place (same names, same Parameter objects, same buffers), so
    ``parameters()``, optimizers built before the conversion and ``state_dict`` keys are
    unchanged. A ``module`` that is itself one of these layers is returned converted. Other
    subclasses of BatchNorm (other normalizations) are left as they are.

    >>> from npsn.distributed.comm import SingleProcess
    >>> from npsn.nn import BatchNorm2d, ReLU, Sequential
    >>> net = convert_sync_batchnorm(Sequential(BatchNorm2d(4), ReLU()), SingleProcess())
    >>> type(net[0]).__name__
    'SyncBatchNorm2d'
    """
    if type(module) in _SYNC_OF:
        return _synchronized(module, comm)
    for name, child in list(module._modules.items()):
        converted = convert_sync_batchnorm(child, comm)
        if converted is not child:
            setattr(module, name, converted)
    return module
