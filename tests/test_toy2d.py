"""Tests of npsn.experiments.toy: ring and grid mixtures, PacGAN's metrics, the MLPs, short training runs, the scatter PNG."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from npsn.data import mixtures
from npsn.data.mixtures import get_dataset

from npsn.eval.modes import assign_to_modes, mean_std, mode_metrics, summarize

from npsn.gan.mlp import make_discriminator, make_generator

from npsn.experiments.toy import LOW_QUALITY_COLOR, REAL_COLOR, ToyConfig, ToyGAN, save_scatter, train
from npsn.nn.activations import LeakyReLU, ReLU, Scale
from npsn.nn.batchnorm import BatchNorm1d
from npsn.nn.linear import Linear
from npsn.nn.spectral_norm import SpectralNorm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# P(r < 3) for a 2-D standard normal: r^2 ~ chi-square(2), P(r^2 < 9) = 1 - exp(-9/2)
HQ_EXACT = 1 - math.exp(-4.5)


# ---------------------------------------------------------------------- data
def test_ring_modes_and_std():
    ring = mixtures.ring()
    assert ring.num_modes == 8 and ring.std == 0.01
    angles = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(ring.means, np.stack([np.cos(angles), np.sin(angles)], 1), atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 1.0)


def test_grid_modes_and_std():
    grid = mixtures.grid()
    assert grid.num_modes == 25 and grid.std == 0.05
    expected = {(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}
    assert {tuple(m) for m in grid.means.tolist()} == expected


@pytest.mark.parametrize("name", ["ring", "grid"])
def test_samples_have_the_mixture_statistics(name):
    mixture = get_dataset(name)
    x, k = mixture.sample(40_000, np.random.default_rng(0))
    assert x.shape == (40_000, 2) and x.dtype == np.float32
    residual = x.astype(np.float64) - mixture.means[k]
    # per-coordinate std of x - mu_k is sigma (relative error of a std from 80k values ~ 0.25%)
    np.testing.assert_allclose(residual.std(axis=0), mixture.std, rtol=0.02)
    np.testing.assert_allclose(residual.mean(axis=0), 0, atol=0.02 * mixture.std)
    # modes are drawn uniformly: each count within 5 binomial standard deviations of n/K
    counts = np.bincount(k, minlength=mixture.num_modes)
    p = 1 / mixture.num_modes
    assert np.all(np.abs(counts - 40_000 * p) < 5 * math.sqrt(40_000 * p * (1 - p)))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="ring"):
        get_dataset("spiral")


# ---------------------------------------------------------------------- metrics
@pytest.mark.parametrize("name", ["ring", "grid"])
def test_metrics_of_true_samples(name):
    mixture = get_dataset(name)
    n = 20_000
    x, _ = mixture.sample(n, np.random.default_rng(1))
    m = mode_metrics(x, mixture)
    assert m["modes"] == mixture.num_modes
    assert m["num_samples"] == n and sum(m["mode_counts"]) == round(m["hq_fraction"] * n)
    # HQ fraction of exact samples is P(chi2_2 < 9) = 98.89%; binomial std here is 0.07%
    assert abs(m["hq_fraction"] - HQ_EXACT) < 0.004
    # KL of an empirical histogram against its own distribution ~ (K - 1) / (2 n) ~ 0.0006 for the grid
    assert 0 <= m["reverse_kl"] < 0.005


def test_metrics_of_three_modes_give_log_k_over_3():
    grid = mixtures.grid()
    rng = np.random.default_rng(2)
    kept = [0, 7, 19]
    # 300 points at each of 3 modes, all within 1 std of their center
    x = np.concatenate([grid.means[k] + 0.5 * grid.std * rng.uniform(-1, 1, (300, 2)) for k in kept])
    m = mode_metrics(x, grid)
    assert m["modes"] == 3
    assert m["hq_fraction"] == 1.0
    assert [i for i, c in enumerate(m["mode_counts"]) if c] == kept
    # KL(uniform on 3 modes || uniform on 25) = sum_k (1/3) log(25/3) = log(25/3)
    assert m["reverse_kl"] == pytest.approx(math.log(25 / 3), rel=1e-12)


def test_metrics_unequal_histogram_by_hand():
    ring = mixtures.ring()
    # 3 points at mode 0, 1 at mode 2, 1 far away (not HQ)
    x = np.array([ring.means[0]] * 3 + [ring.means[2], [0.0, 0.0]])
    m = mode_metrics(x, ring)
    assert m["modes"] == 2 and m["hq_fraction"] == pytest.approx(4 / 5)
    p = np.array([3 / 4, 1 / 4])
    assert m["reverse_kl"] == pytest.approx(float(np.sum(p * np.log(8 * p))), rel=1e-12)


def test_hq_threshold_is_three_std_of_the_nearest_mode():
    ring = mixtures.ring()
    direction = np.array([0.0, 1.0])  # tangent at mode 0 = (1, 0): moving along it stays nearest to mode 0
    inside = ring.means[0] + 2.99 * ring.std * direction
    outside = ring.means[0] + 3.01 * ring.std * direction
    nearest, r = assign_to_modes(np.stack([inside, outside]), ring)
    assert nearest.tolist() == [0, 0]
    np.testing.assert_allclose(r, [2.99, 3.01])
    m = mode_metrics(np.stack([inside, outside]), ring)
    assert m["hq_fraction"] == 0.5 and m["mode_counts"][0] == 1


def test_no_hq_sample_gives_nan_kl():
    m = mode_metrics(np.full((10, 2), 100.0), mixtures.grid())
    assert m["modes"] == 0 and m["hq_fraction"] == 0.0 and math.isnan(m["reverse_kl"])


def test_summarize_mean_and_sample_std():
    ms = [{"modes": 6, "hq_fraction": 0.9, "reverse_kl": 0.1}, {"modes": 8, "hq_fraction": 0.8, "reverse_kl": 0.3}]
    s = summarize(ms)
    assert s["modes"] == pytest.approx((7.0, math.sqrt(2)))
    assert s["hq_percent"] == pytest.approx((85.0, math.sqrt(50)))
    assert s["reverse_kl"] == pytest.approx((0.2, math.sqrt(0.02)))
    assert mean_std([3.0]) == (3.0, 0.0)


# ---------------------------------------------------------------------- models
def test_generator_architecture():
    G = make_generator(rng=np.random.default_rng(0))
    layers = list(G)
    assert len(layers) == 13
    for i in range(4):
        lin, bn, act = layers[3 * i:3 * i + 3]
        assert isinstance(lin, Linear) and lin.bias is None and lin.out_features == 400
        assert isinstance(bn, BatchNorm1d) and bn.momentum == 0.05
        assert isinstance(act, ReLU)
    assert layers[-1].in_features == 400 and layers[-1].out_features == 2 and layers[-1].bias is not None
    assert np.all(layers[-1].bias.data == 0)
    # N(0, 0.02^2) initialization (160,000 weights: std within 1%)
    assert layers[3].weight.data.std() == pytest.approx(0.02, rel=0.01)
    z = np.random.default_rng(1).standard_normal((7, 2)).astype(np.float32)
    assert G(z).shape == (7, 2)


@pytest.mark.parametrize("sn", [True, False])
def test_discriminator_architecture(sn):
    D = make_discriminator(sn=sn, rng=np.random.default_rng(0))
    layers = list(D)
    linears = layers[0::2]
    assert len(linears) == 4 and all(isinstance(a, LeakyReLU) and a.negative_slope == 0.2 for a in layers[1::2])
    for layer in linears:
        assert isinstance(layer, SpectralNorm) == sn
    inner = [layer.module if sn else layer for layer in linears]
    assert [(l.in_features, l.out_features) for l in inner] == [(2, 200), (200, 200), (200, 200), (200, 1)]
    x = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    assert D(x).shape == (5, 1)


def test_discriminator_initializations():
    default = make_discriminator(sn=False, rng=np.random.default_rng(0))
    normal = make_discriminator(sn=False, init="normal", rng=np.random.default_rng(0))
    # default: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; std = bound / sqrt(3)
    assert np.abs(default[2].weight.data).max() <= 1 / math.sqrt(200)
    assert default[2].weight.data.std() == pytest.approx(1 / math.sqrt(3 * 200), rel=0.02)
    assert np.any(default[2].bias.data != 0)
    # PacGAN's: N(0, 0.02^2) weights, zero biases
    assert normal[2].weight.data.std() == pytest.approx(0.02, rel=0.02)
    assert np.all(normal[2].bias.data == 0)
    with pytest.raises(ValueError, match="normal"):
        make_discriminator(init="xavier")


def test_relu_discriminator_and_bad_activation():
    D = make_discriminator(activation="relu")
    assert isinstance(D[1], ReLU)
    with pytest.raises(ValueError, match="leaky_relu"):
        make_discriminator(activation="maxout")


# ---------------------------------------------------------------------- training
def _snapshot(module):
    return {name: p.data.copy() for name, p in module.named_parameters()}


def _changed(before, module):
    return {name for name, p in module.named_parameters() if not np.array_equal(before[name], p.data)}


@pytest.mark.parametrize("sn", [True, False])
def test_d_step_updates_only_d_and_g_step_only_g(sn):
    gan = ToyGAN(ToyConfig(dataset="ring", sn=sn, batch_size=16, g_hidden=32, d_hidden=16))
    g0, d0 = _snapshot(gan.G), _snapshot(gan.D)
    gan.d_step()
    assert _changed(g0, gan.G) == set() and _changed(d0, gan.D) == set(d0)
    g1, d1 = _snapshot(gan.G), _snapshot(gan.D)
    gan.g_step()
    assert _changed(d1, gan.D) == set() and _changed(g1, gan.G) == set(g1)
    assert all(p.requires_grad for p in gan.D.parameters())


def test_d_input_scale_is_the_chain_rule():
    """With no SN, D(s x) with first-layer weight W is D(x) with weight s W: G gets the same gradient."""
    small = dict(dataset="grid", sn=False, batch_size=16, g_hidden=32, d_hidden=16, seed=5)
    scaled = ToyGAN(ToyConfig(d_input_scale=2.5, **small))
    folded = ToyGAN(ToyConfig(**small))
    assert isinstance(scaled.D[0], Scale) and scaled.D[0].factor == 2.5  # D = Scale(s), then the MLP
    folded.D[0].weight.data = scaled.D[1].weight.data * np.float32(2.5)
    assert scaled.g_step() == pytest.approx(folded.g_step(), rel=1e-5)
    for (name, a), (_, b) in zip(scaled.G.named_parameters(), folded.G.named_parameters()):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("loss", ["nonsaturating", "hinge", "wasserstein"])
@pytest.mark.parametrize("sn", [True, False])
def test_short_training_on_the_ring(device, sn, loss):
    config = ToyConfig(dataset="ring", sn=sn, loss=loss, iterations=5, batch_size=32, g_hidden=64,
                             d_hidden=32, eval_samples=300, device=device, seed=3)
    result = train(config, eval_every=5, log=lambda *_: None)
    assert math.isfinite(result["final_loss_d"]) and math.isfinite(result["final_loss_g"])
    assert result["samples"].shape == (300, 2) and np.all(np.isfinite(result["samples"]))
    assert result["metrics"]["num_samples"] == 300
    assert [h["iteration"] for h in result["history"]] == [5]
    assert result["config"]["device"] == device


def test_training_is_reproducible_from_the_seed():
    config = ToyConfig(dataset="grid", iterations=3, batch_size=16, g_hidden=32, d_hidden=16,
                             eval_samples=50, seed=7)
    a, b = train(config), train(config)
    np.testing.assert_array_equal(a["samples"], b["samples"])
    assert a["final_loss_d"] == b["final_loss_d"]


def test_generate_uses_running_statistics_and_restores_train_mode():
    gan = ToyGAN(ToyConfig(dataset="ring", batch_size=16, g_hidden=32, d_hidden=16, eval_samples=20))
    x1 = gan.generate()
    x2 = gan.generate(gan.eval_z[:5])
    # eval mode: each sample depends only on its own z
    np.testing.assert_allclose(x1[:5], x2, rtol=1e-5, atol=1e-6)
    assert gan.G.training


# ---------------------------------------------------------------------- scatter plot
def test_scatter_png(tmp_path):
    ring = mixtures.ring()
    real, _ = ring.sample(200, np.random.default_rng(0))
    generated = np.array([ring.means[0] * 1.0, [1.4, 1.4], [9.0, 9.0]])  # HQ, low quality, off-plot
    path = save_scatter(str(tmp_path / "ring.png"), real, generated, ring, size=300, title="test")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (300, 300, 3)
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    assert LOW_QUALITY_COLOR in colors and REAL_COLOR in colors


def test_script_runs_and_writes_outputs(tmp_path):
    out = tmp_path / "toy"
    cmd = [sys.executable, os.path.join(REPO, "scripts", "toy_2d.py"), "--dataset", "ring", "--iterations", "2",
           "--seeds", "2", "--eval-samples", "100", "--batch-size", "16", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PacGAN4" in proc.stdout and "npsn SN (2 seeds)" in proc.stdout
    for name in ("results.json", "table.md", "scatter_ring_sn.png", "scatter_ring_nosn.png"):
        assert (out / name).exists()
