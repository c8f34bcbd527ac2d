"""Mode-coverage metrics of 2-D samples (PacGAN's modes covered, high-quality fraction, reverse KL).

See :mod:`npsn.experiments.toy` for the definitions."""
import math

import numpy as np

from npsn import backend

HQ_THRESHOLD = 3.0  # high quality: within 3 standard deviations of the nearest mode


def assign_to_modes(samples, mixture):
    """Nearest mode of each sample and its distance to it in units of the mode's std.

    Args:
        samples: (N, 2) array on either device (copied to the host: this is evaluation, not training).
        mixture: a :class:`GaussianMixture2D`.
    Returns:
        (nearest, r): nearest (N,) int64 mode index; r (N,) float64, r = min_k ||x - mu_k|| / sigma.
    """
    x = backend.to_numpy(samples).astype(np.float64)
    # d2[n, k] = ||x_n - mu_k||^2
    d2 = ((x[:, None, :] - mixture.means[None, :, :]) ** 2).sum(axis=2)
    nearest = d2.argmin(axis=1)
    # r = ||x - mu_nearest|| / sigma
    r = np.sqrt(d2[np.arange(len(x)), nearest]) / mixture.std
    return nearest, r


def mode_metrics(samples, mixture, threshold=HQ_THRESHOLD):
    r"""PacGAN's mode-collapse metrics of a set of generated samples (see the module docstring).

    Args:
        samples: (N, 2) array on either device.
        mixture: the true :class:`GaussianMixture2D`.
        threshold: HQ radius in standard deviations (3).
    Returns:
        dict of host Python values: ``modes`` (int, modes with >= 1 HQ sample), ``hq_fraction``
        (float in [0, 1]), ``reverse_kl`` (float, NaN when no sample is HQ), ``mode_counts``
        (list of K ints: HQ samples per mode), ``num_samples`` (int).

    .. math::
        n_k = \#\{x : \text{nearest}(x) = k,\ r(x) < 3\}, \quad
        p_g(k) = \frac{n_k}{\sum_j n_j}, \quad
        \mathrm{KL}(p_g \,\|\, U_K) = \sum_{k:\,p_g(k)>0} p_g(k) \log\big(K\,p_g(k)\big).
    """
    nearest, r = assign_to_modes(samples, mixture)
    hq = r < threshold
    counts = np.bincount(nearest[hq], minlength=mixture.num_modes)
    n_hq = int(counts.sum())
    if n_hq > 0:
        p = counts[counts > 0] / n_hq
        # KL(p_g || uniform) = sum_k p_g(k) log(K p_g(k)), over modes with p_g(k) > 0
        reverse_kl = float(np.sum(p * np.log(mixture.num_modes * p)))
    else:
        reverse_kl = math.nan
    return {
        "modes": int(np.count_nonzero(counts)),
        "hq_fraction": n_hq / len(r),
        "reverse_kl": reverse_kl,
        "mode_counts": [int(c) for c in counts],
        "num_samples": int(len(r)),
    }


def mean_std(values):
    """(mean, sample standard deviation with ddof=1; 0 for one value) of a list of floats, NaN-propagating."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(metrics_list):
    """Mean and spread over seeds: {"modes": (mean, std), "hq_percent": (mean, std), "reverse_kl": (mean, std)}."""
    return {
        "modes": mean_std([m["modes"] for m in metrics_list]),
        "hq_percent": mean_std([100 * m["hq_fraction"] for m in metrics_list]),
        "reverse_kl": mean_std([m["reverse_kl"] for m in metrics_list]),
    }
