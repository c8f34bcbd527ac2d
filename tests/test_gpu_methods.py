"""The GPU code path of the paper's competing discriminators (issue 21), on the ``device`` fixture.

Each test runs on "cpu" and on "gpu" (real CuPy when usable, else the strict stand-in of
``tests/strict_cupy``, which raises on an implicit host conversion, a NumPy-only name, or a scalar-only
operation inside a fused kernel) and compares with the CPU: the new layers' forward and backward, the
gradient penalty with its double backward, the orthonormal penalty, weight clipping in place, and a
training iteration of every method.
"""
import numpy as np
import pytest

from npsn import backend
from npsn.backend import to_device, to_numpy
from test_gpu_new_paths import assert_layer_matches_cpu


@pytest.mark.parametrize("name", ["LayerNorm", "Bias", "BatchNorm2d(affine=False)", "WeightNorm(Conv2d)",
                                  "WeightNorm(Linear)"])
def test_the_new_layers_on_the_device(name, device):
    import npsn

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 5, 5, 3)) * 2 + 1).astype(np.float32)
    make, inputs, grad_shape = {
        "LayerNorm": (lambda: npsn.LayerNorm(), [x], x.shape),
        "Bias": (lambda: npsn.Bias(3), [x], x.shape),
        "BatchNorm2d(affine=False)": (lambda: npsn.BatchNorm2d(3, affine=False), [x], x.shape),
        "WeightNorm(Conv2d)": (lambda: npsn.WeightNorm(npsn.Conv2d(3, 4, 4, 2, 1, rng=np.random.default_rng(1))), [x],
                               (4, 2, 2, 4)),
        "WeightNorm(Linear)": (lambda: npsn.WeightNorm(npsn.Linear(3, 2, rng=np.random.default_rng(1))),
                               [x[:, 0, 0]], (4, 2)),
    }[name]
    if name in ("LayerNorm", "BatchNorm2d(affine=False)"):  # no parameters: compare output and input gradient
        from test_gpu_new_paths import run_layer

        grad_out = np.random.default_rng(1).standard_normal(grad_shape).astype(np.float32)
        expected, got = run_layer(make(), "cpu", inputs, grad_out), run_layer(make(), device, inputs, grad_out)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-5)
        return
    assert_layer_matches_cpu(make, device, inputs, grad_shape, rtol=1e-4, atol=1e-5)


def _penalized(device, d_norm):
    """(D on the device, its gradient penalty at fixed x_hat, {name: gradient}), float32."""
    from npsn.gan.gradient_penalty import gradient_penalty
    from npsn.gan.models import build_gan

    _, D = build_gan("cnn", g_ch=8, d_ch=4, seed=2, d_norm=d_norm)
    D.to(device)
    x_hat = to_device(np.random.default_rng(3).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32), device)
    penalty = gradient_penalty(D, x_hat)
    return float(to_numpy(penalty)), {n: to_numpy(p.grad) for n, p in D.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("d_norm", ["none", "sn", "wn"])
def test_the_gradient_penalty_and_its_double_backward_on_the_device(d_norm, device):
    expected, got = _penalized("cpu", d_norm), _penalized(device, d_norm)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
    assert sorted(got[1]) == sorted(expected[1]) and got[1]
    scale = max(float(np.abs(g).max()) for g in expected[1].values())
    for name, grad in expected[1].items():
        np.testing.assert_allclose(got[1][name], grad, rtol=1e-3, atol=1e-4 * scale, err_msg=name)


def test_orthonormal_penalty_and_weight_clipping_on_the_device(device):
    from npsn.gan.orthonormal import orthonormal_penalty
    from npsn.gan.weight_clipping import WeightClipping
    from npsn.nn.module import Parameter

    rng = np.random.default_rng(4)
    for shape in ((4, 3, 3, 3), (8, 3, 1, 1)):
        w = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        value, grad = orthonormal_penalty(w)
        dev_value, dev_grad = orthonormal_penalty(to_device(w, device))
        assert backend.device_of(dev_grad) == device
        np.testing.assert_allclose(float(to_numpy(dev_value)), float(value), rtol=1e-5)
        np.testing.assert_allclose(to_numpy(dev_grad), grad, rtol=1e-4, atol=1e-5)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    p = Parameter(to_device(w, device))
    view = p.data
    WeightClipping([p], 0.5).after_step(None)
    assert p.data is view  # in place: the optimizer's flat buffer keeps its views
    np.testing.assert_array_equal(to_numpy(p.data), np.clip(w, -0.5, 0.5))


@pytest.mark.parametrize("method", ["weight-clipping", "wgan-gp", "gan-gp", "bn", "ln", "wn", "orthonormal"])
def test_an_iteration_of_each_method_on_the_device_equals_the_cpu(method, device, tmp_path):
    from fake_cifar import write_fake_cifar

    from npsn.data.cifar10 import load_cifar10
    from npsn.gan.methods import PAPER_METHODS
    from npsn.gan.trainer import Trainer, preset_config

    images, _ = load_cifar10(write_fake_cifar(str(tmp_path / "cifar"), n_per_batch=20, seed=0))
    trainers = [Trainer(preset_config("paper-cnn-nonsaturating", iterations=2, g_ch=8, d_ch=8, batch_size=8, n_dis=2,
                                      device=where, sample_every=0, **PAPER_METHODS[method]),
                        images, str(tmp_path / where)) for where in ("cpu", device)]
    cpu, dev = ([float(v) for v in to_numpy(np.stack([to_numpy(a) for a in t.run_updates()]))] for t in trainers)
    np.testing.assert_allclose(dev, cpu, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(trainers[0].D.named_parameters(), trainers[1].D.parameters()):
        assert backend.device_of(q.data) == device
        np.testing.assert_allclose(to_numpy(q.data), p.data, rtol=1e-4, atol=1e-5, err_msg=name)
