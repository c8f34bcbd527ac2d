r"""The Fréchet distance between two sets of feature vectors, each summarized by a Gaussian (as FID).

For features with means mu_r, mu_g and covariances C_r, C_g, the squared Fréchet (2-Wasserstein)
distance between N(mu_r, C_r) and N(mu_g, C_g) is (Dowson & Landau 1982)

.. math::
    d^2 = \lVert \mu_r - \mu_g \rVert^2
          + \operatorname{tr}\Big(C_r + C_g - 2\big(C_r^{1/2} C_g C_r^{1/2}\big)^{1/2}\Big).

FID (Heusel et al. 2017) is this d^2 on Inception-v3 pool features; npsn computes it on its own
classifier's penultimate features (:meth:`npsn.eval.classifier.Classifier.features`), so its
values are **not** comparable with published FIDs (see docs/evaluation.md).

Only symmetric eigendecompositions are used (``numpy.linalg.eigh``, no SciPy): C_r^{1/2} = V
diag(sqrt(w)) V^T from C_r = V diag(w) V^T, and the trace of the square root of the symmetric
positive semi-definite M = C_r^{1/2} C_g C_r^{1/2} is the sum of the square roots of M's
eigenvalues. Eigenvalues that rounding makes slightly negative are clipped to 0. Everything runs
in float64 on the host: features from the GPU are copied over once.
"""
import numpy as np

from npsn.backend import to_numpy


def feature_statistics(features):
    """Mean (F,) and covariance (F, F) of features (N, F), float64 on the host; N >= 2.

    The covariance is the unbiased one (divided by N - 1), as ``numpy.cov`` and FID's reference code.
    """
    x = np.asarray(to_numpy(features), dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_statistics needs features (N, F) with N >= 2, got shape {x.shape}")
    mu = x.mean(axis=0)
    centered = x - mu
    # C = (X - mu)^T (X - mu) / (N - 1)
    cov = centered.T @ centered / (x.shape[0] - 1)
    return mu, cov


def sqrtm_psd(matrix):
    """The symmetric square root of a symmetric positive semi-definite matrix, by ``eigh``.

    ``S = V diag(sqrt(max(w, 0))) V^T`` for ``matrix = V diag(w) V^T`` (the input is symmetrized first).
    """
    sym = (matrix + matrix.T) / 2
    w, v = np.linalg.eigh(sym)
    # S = V diag(sqrt(w)) V^T
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(cov_a, cov_b):
    r"""tr((A^{1/2} B A^{1/2})^{1/2}) for symmetric PSD A, B: the sum of the square roots of the eigenvalues of A^{1/2} B A^{1/2}.

    These eigenvalues are those of A B (similar matrices), so the value is symmetric in A and B.
    """
    root_a = sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu_a, cov_a, mu_b, cov_b):
    r"""d^2 = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2}) (float; FID's formula).

    >>> import numpy as np
    >>> round(frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([4.0, 9.0])), 6)  # 2 + 1 + 1
    4.0
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mu_a.shape * 2:
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu_a.shape}, {mu_b.shape}; "
                         f"cov {cov_a.shape}, {cov_b.shape}")
    diff = mu_a - mu_b
    # d^2 = |mu_a - mu_b|^2 + tr C_a + tr C_b - 2 tr (C_a^1/2 C_b C_a^1/2)^1/2
    d2 = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(d2), 0.0)


def frechet_distance_of_features(features_a, features_b):
    """:func:`frechet_distance` between the Gaussians fitted to two feature sets (N_a, F) and (N_b, F)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))
