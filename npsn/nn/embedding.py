"""A lookup table of learned vectors indexed by class labels (PyTorch's ``nn.Embedding``)."""
from npsn.backend import get_array_module
from npsn.nn import init
from npsn.nn.module import Parameter, WeightLayer


def one_hot(labels, num_classes, dtype):
    """The (N, K) matrix Y with Y[n, k] = 1 where labels[n] == k, else 0 (labels: integers (N,) in [0, K)).

    >>> import numpy as np
    >>> one_hot(np.array([2, 0], dtype=np.int32), 3, np.float32)
    array([[0., 0., 1.],
           [1., 0., 0.]], dtype=float32)
    """
    xp = get_array_module(labels)
    # Y[n, k] = [labels[n] == k]
    return (labels[:, None] == xp.arange(num_classes, dtype=labels.dtype)).astype(dtype)


class Embedding(WeightLayer):
    r"""e = W[y]: row y_n of a learned (K, D) matrix for each label y_n, PyTorch's ``nn.Embedding``.

    Args:
        num_embeddings: K, the number of classes.
        embedding_dim: D, the length of each vector.
        rng: NumPy generator for the initial values (default: ``npsn.nn.init``'s seeded one).

    Parameter (PyTorch's name and layout): ``weight`` (K, D), initialized N(0, 1) like PyTorch
    (models may overwrite it: the projection discriminator uses Glorot uniform, as its authors).

    Shapes: labels y (N,) integers in [0, K) (int32 in npsn's models; not checked here, in the hot
    path: callers validate them at the boundary) -> e (N, D), in W's dtype.

    Backward. With the one-hot matrix Y (N, K) of the labels, e = Y W, a matrix product, so for
    G = dL/de (N, D)

    .. math:: \frac{\partial L}{\partial W} = Y^T G, \qquad
              \Big(\frac{\partial L}{\partial W}\Big)_k = \sum_{n:\, y_n = k} G_n,

    row k collects the gradients of the samples of class k (and is 0 for a class absent from the
    batch); computed as this product, exact and vectorized (no scattered adds). Labels are
    integers and get no gradient: backward returns None.

    The map is :meth:`forward_with` / :meth:`backward_with` for any weight array, so
    :class:`~npsn.nn.spectral_norm.SpectralNorm` composes: ``spectral_norm(Embedding(K, D))`` looks
    rows up in W / sigma(W), the authors' ``SNEmbedID`` (pfnet-research/sngan_projection,
    source/links/sn_embed_id.py).

    *Which axis is the matrix's rows.* sigma(W) = sigma(W^T), so the normalized table is the same
    either way; what the choice fixes is the shape of the persistent vectors and where the power
    iteration starts. ``SNEmbedID`` keeps W as (in_size=K, out_size=D) and ``u`` of shape (1, K), and
    each step (source/functions/max_sv.py) computes v = normalize(u W) (length D), then
    u = normalize(v W^T) (length K): the K classes are the rows, u lives on the classes and v on
    the features, and an update starts from the stored u. That is npsn's SpectralNorm with ``dim=0``,
    its default for every layer but ConvTranspose2d, applied to W as stored (K, D): ``weight_u`` (K,),
    ``weight_v`` (D,), v <- W^T u first, then u <- W v; ``torch.nn.utils.spectral_norm(nn.Embedding(K, D))``
    chooses the same (dim=0), so the buffers load into PyTorch as they are. (The other orientation
    would fit the view of the embedding as a Linear map on one-hot codes, e = W^T onehot(y), whose
    weight is the (D, K) matrix W^T; it gives the same sigma, but not the authors' u.)

    >>> import numpy as np, npsn
    >>> emb = npsn.Embedding(3, 2, rng=np.random.default_rng(0))
    >>> y = np.array([2, 0, 2], dtype=np.int32)
    >>> bool(np.array_equal(emb(y), emb.weight.data[[2, 0, 2]]))
    True
    >>> emb.backward(np.ones((3, 2), dtype=np.float32))  # labels: no gradient
    >>> emb.weight.grad  # class 2 appeared twice, class 1 never
    array([[1., 1.],
           [0., 0.],
           [2., 2.]], dtype=float32)
    """

    def __init__(self, num_embeddings, embedding_dim, rng=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(init.normal((num_embeddings, embedding_dim), std=1.0, rng=rng))
        self.bias = None  # no bias: SpectralNorm and the model builders look for one

    def forward_with(self, labels, weight):
        """e = W[y] with W = ``weight`` (shaped as ``self.weight``)."""
        xp = get_array_module(weight)
        self.save_for_backward(labels=labels)
        # e_n = W[y_n]
        return xp.take(weight, labels, axis=0)

    def backward_with(self, grad_out):
        """``(None, dL/dW)``: labels get no gradient; dL/dW = Y^T G (None when ``weight.requires_grad`` is False)."""
        labels = self.saved().labels
        if not self.weight.requires_grad:
            return None, None
        # dL/dW = Y^T G, Y the one-hot labels (N, K)
        return None, one_hot(labels, self.num_embeddings, grad_out.dtype).T @ grad_out

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"
