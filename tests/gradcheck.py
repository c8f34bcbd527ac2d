"""A shared central-difference gradient check for any npsn module (float64).

For a module m, input x and a fixed random R, the scalar L = <m(x), R> has dL/dy = R, so one
backward(R) gives the analytic dL/dx and every parameter's dL/dp. Each is compared with

    dL/dz_i ~ (L(z + h e_i) - L(z - h e_i)) / (2 h)

for every entry z_i. Buffers (BatchNorm running statistics, SpectralNorm's u and v) are restored
before every forward, so each evaluation sees the same module state as the analytic pass.
"""
import numpy as np

from npsn.backend import get_array_module, to_numpy


def relative_error(analytic, numeric, floor=0.0):
    """||a - n|| / max(||a||, ||n||, floor): 0 for a perfect match, ~1 for unrelated arrays.

    ``floor`` keeps a gradient that is exactly zero in theory (e.g. a bias before BatchNorm in
    training mode) from being judged by finite-difference rounding noise alone.
    """
    a, n = to_numpy(analytic).astype(np.float64), to_numpy(numeric).astype(np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(n), floor, 1e-300)
    return float(np.linalg.norm(a - n) / scale)


def _buffer_snapshot(module):
    return [(m, name, b.copy()) for m in module.modules() for name, b in m._buffers.items()]


def _restore(snapshot):
    for m, name, b in snapshot:
        m._buffers[name] = b.copy()


def numerical_gradient(loss, z, h=1e-6):
    """Central differences of the scalar function ``loss()`` with respect to every entry of array ``z`` (modified in place, then restored)."""
    xp = get_array_module(z)
    flat = z.reshape(-1)  # a view: z is contiguous
    grad = xp.zeros(flat.shape, dtype=np.float64)
    for i in range(flat.size):
        old = flat[i].copy()
        flat[i] = old + h
        plus = loss()
        flat[i] = old - h
        minus = loss()
        flat[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad.reshape(z.shape)


def check_module_gradients(module, x, seed=0, h=1e-6):
    """Return ``{"input": err, "<param name>": err, ...}``: relative errors of every analytic gradient.

    ``module`` and ``x`` must be float64; the module's mode (train/eval) is used as is.
    """
    xp = get_array_module(x)
    x = x.copy()
    snapshot = _buffer_snapshot(module)
    _restore(snapshot)
    y = module(x)
    R = xp.asarray(np.random.default_rng(seed).standard_normal(y.shape))

    def loss():
        _restore(snapshot)
        return float(to_numpy((module(x) * R).sum()))

    module.zero_grad()
    _restore(snapshot)
    module(x)
    pairs = {"input": (module.backward(R), numerical_gradient(loss, x, h))}
    for name, p in module.named_parameters():
        analytic = p.grad if p.grad is not None else xp.zeros_like(p.data)
        pairs[name] = (analytic, numerical_gradient(loss, p.data, h))
    _restore(snapshot)
    # errors are relative to each gradient, or to 1e-3 of the largest one of this module if smaller
    floor = 1e-3 * max(float(np.linalg.norm(to_numpy(a))) for a, _ in pairs.values())
    return {name: relative_error(a, n, floor) for name, (a, n) in pairs.items()}
