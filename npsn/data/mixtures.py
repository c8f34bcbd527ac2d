"""2-D mixtures of Gaussians (PacGAN's ring and grid) for measuring mode collapse.

See :mod:`npsn.experiments.toy` for the protocol."""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture2D:
    """A uniform mixture of K isotropic 2-D Gaussians N(mu_k, std^2 I).

    Attributes:
        name: "ring" or "grid" (used in file names and tables).
        means: (K, 2) float64 host array of the mode centers mu_k.
        std: the common standard deviation sigma of every mode (per coordinate).
        extent: half-width of the square [-extent, extent]^2 drawn by :func:`save_scatter`.
    """

    name: str
    means: np.ndarray
    std: float
    extent: float

    @property
    def num_modes(self):
        return len(self.means)

    def sample(self, n, rng):
        """Draw n points on the host: x = mu_k + std * eps, k ~ Uniform{0..K-1}, eps ~ N(0, I).

        Args:
            n: number of points.
            rng: ``numpy.random.Generator``.
        Returns:
            (x, k): x (n, 2) float32 host array; k (n,) int64 mode labels.
        """
        k = rng.integers(0, self.num_modes, size=n)
        # x = mu_k + sigma eps
        x = self.means[k] + self.std * rng.standard_normal((n, 2))
        return x.astype(np.float32), k


def ring(num_modes=8, radius=1.0, std=0.01):
    """PacGAN's 2D-ring: ``num_modes`` Gaussians with means radius (cos 2 pi k/K, sin 2 pi k/K), std 0.01."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture2D("ring", means, std, extent=1.5 * radius)


def grid(side=5, spacing=2.0, std=0.05):
    """PacGAN's 2D-grid: side^2 Gaussians at {-4, -2, 0, 2, 4}^2 (for side 5, spacing 2), std 0.05."""
    coords = spacing * (np.arange(side) - (side - 1) / 2)
    means = np.array([(a, b) for a in coords for b in coords], dtype=np.float64)
    return GaussianMixture2D("grid", means, std, extent=float(coords[-1]) + spacing)


DATASETS = {"ring": ring, "grid": grid}


def get_dataset(name):
    """The mixture registered under ``name`` in :data:`DATASETS` (ValueError listing the choices otherwise)."""
    try:
        return DATASETS[name]()
    except KeyError:
        raise ValueError(f"unknown 2-D dataset {name!r}: choose one of {', '.join(sorted(DATASETS))}") from None
