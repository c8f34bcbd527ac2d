"""Class-conditional models: the unconditional ones unchanged, the conditional ones' gradients, their PyTorch mirror."""
import hashlib

import numpy as np
import pytest

import npsn
from gradcheck import relative_error
from npsn.backend import to_device, to_numpy
from npsn.gan.models import MODELS, build_gan, gan_from_config

K = 10


def state_digest(model):
    """A short SHA-256 of a state_dict: names, dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        a = np.asarray(to_numpy(value))
        for part in (key, str(a.dtype), str(a.shape)):
            h.update(part.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# (G, D) digests of build_gan(name, seed=0, **kwargs) at the commit before conditional models (a6b567f)
BASE_DIGESTS = {
    ("cnn", ()): ("88040d242581a1ba", "bca023233d98475f"),
    ("cnn", (("sn_mode", "operator"),)): ("88040d242581a1ba", "e3a5995c32ce80db"),
    ("cnn", (("d_final_bias", False),)): ("88040d242581a1ba", "8d0bf6781f730a80"),
    ("resnet", ()): ("d21912013b49b8e1", "3158ae4265044847"),
    ("resnet", (("sn_mode", "operator"),)): ("d21912013b49b8e1", "47e798e9897de4f6"),
    ("resnet", (("d_final_bias", False),)): ("d21912013b49b8e1", "156f169e1de24053"),
    ("sndcgan", ()): ("552fcff3feccb068", "4221788e0595f247"),
    ("sndcgan", (("sn_mode", "operator"),)): ("552fcff3feccb068", "7cdc96f45cace3ac"),
    ("sndcgan", (("d_final_bias", False),)): ("552fcff3feccb068", "323ba8c3d20df3f3"),
}


@pytest.mark.parametrize("name,kwargs", list(BASE_DIGESTS), ids=[f"{n}{dict(kw)}" for n, kw in BASE_DIGESTS])
def test_unconditional_models_are_unchanged(name, kwargs):
    G, D = build_gan(name, seed=0, num_classes=0, **dict(kwargs))
    assert (state_digest(G), state_digest(D)) == BASE_DIGESTS[(name, kwargs)]
    assert type(G) is npsn.Sequential and type(D) is npsn.Sequential
    assert not hasattr(G, "num_classes") and not hasattr(D, "num_classes")


def test_old_configs_build_unconditional_models():
    G, D = gan_from_config({"model": "cnn", "g_ch": 8, "d_ch": 8, "seed": 0})
    assert getattr(G, "num_classes", 0) == 0 and getattr(D, "num_classes", 0) == 0
    G, D = gan_from_config({"model": "cnn", "g_ch": 8, "d_ch": 8, "seed": 0, "num_classes": 3})
    assert G.num_classes == D.num_classes == 3


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_bad_num_classes_is_a_value_error(bad):
    with pytest.raises(ValueError, match="num_classes"):
        build_gan("cnn", g_ch=8, d_ch=8, num_classes=bad)


def _small(name, num_classes, seed=0, **kwargs):
    return build_gan(name, z_dim=16, g_ch=16, d_ch=8, seed=seed, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_conditional_models_share_the_unconditional_initial_weights(name):
    """The same seed gives the same weights to every layer both have; the new parameters are K-row tables."""
    G0, D0 = _small(name, 0)
    G1, D1 = _small(name, K)
    g0, g1 = G0.state_dict(), G1.state_dict()
    assert list(g0) == list(g1)  # conditional BN keeps BN's names
    for key in g0:
        if g0[key].shape == g1[key].shape:
            assert np.array_equal(g0[key], g1[key]), key
        else:  # a conditional BN's gamma / beta: (K, C), ones / zeros
            assert g1[key].shape == (K,) + g0[key].shape and key.endswith(("weight", "bias")), key
            assert np.array_equal(g1[key], np.broadcast_to(g0[key], g1[key].shape)), key
    d0, d1 = D0.state_dict(), D1.state_dict()
    last = str(len(D0) - 1)
    for key, value in d0.items():
        key1 = key if not key.startswith(last + ".") else f"{last}.linear.{key[len(last) + 1:]}"
        assert np.array_equal(value, d1[key1]), key
    extra = sorted(set(d1) - {k if not k.startswith(last + ".") else f"{last}.linear.{k[len(last) + 1:]}" for k in d0})
    assert extra == [f"{last}.embedding.{n}" for n in ("weight_orig", "weight_u", "weight_v")]
    assert d1[f"{last}.embedding.weight_orig"].shape[0] == K


@pytest.mark.parametrize("name", MODELS)
def test_conditional_models_use_the_labels(name, device):
    """In eval mode (no batch statistics) changing one sample's label changes that sample's image and logit only."""
    G, D = (m.to(device) for m in _small(name, K))
    assert G.num_classes == D.num_classes == K
    rng = np.random.default_rng(0)
    for _, p in G.named_parameters():
        if p.data.ndim == 2 and p.data.shape[0] == K:  # conditional BN's tables start equal: make the classes differ
            p.data = p.data + to_device(0.3 * rng.standard_normal(p.data.shape).astype(np.float32), device)
    G.eval(), D.eval()
    z = to_device(rng.standard_normal((4, 16)).astype(np.float32), device)
    x = to_device(np.tanh(rng.standard_normal((4, 3, 32, 32))).astype(np.float32), device)
    y = to_device(np.array([0, 3, 3, 9], dtype=np.int32), device)
    y2 = to_device(np.array([0, 3, 5, 9], dtype=np.int32), device)
    images, logits = G(z, y), D(x, y)
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32 and logits.shape == (4, 1)
    changed = np.abs(to_numpy(G(z, y2) - images)).reshape(4, -1).max(axis=1) > 0
    assert changed.tolist() == [False, False, True, False]
    assert (to_numpy(D(x, y2) != logits)[:, 0]).tolist() == [False, False, True, False]


def _directional_check(model, x, labels, rng, h=1e-7):
    """{"input" or parameter name: relative error} of <analytic gradient, V> against a central difference along V.

    One random direction V per array (the input and each parameter): two forwards each. L = <model(x, y), R>.
    Buffers (BN statistics, SN's u, v) are restored before every forward. A derivative smaller than 1e-3 of
    the largest is judged against that (as ``gradcheck.check_module_gradients``). The step h is small (1e-7)
    because a step along V moves every unit of a whole model: with ~1e5 (Leaky)ReLU inputs, h = 1e-6 already
    puts a few across their kink (errors ~1e-2 for unconditional models too), while rounding stays ~1e-9 here.
    """
    snapshot = [(m, name, b.copy()) for m in model.modules() for name, b in m._buffers.items()]

    def restore():
        for m, name, b in snapshot:
            m._buffers[name] = b.copy()

    restore()
    R = rng.standard_normal(model(x, labels).shape)

    def loss():
        restore()
        return float(np.sum(model(x, labels) * R))

    model.zero_grad()
    restore()
    model(x, labels)
    arrays = {"input": (x, model.backward(R))}
    arrays.update({name: (p.data, p.grad) for name, p in model.named_parameters()})
    pairs = {}
    for name, (array, grad) in arrays.items():
        V = rng.standard_normal(array.shape)
        array += h * V
        plus = loss()
        array -= 2 * h * V
        minus = loss()
        array += h * V
        pairs[name] = (float(np.sum(grad * V)), (plus - minus) / (2 * h))
    restore()
    # relative to each derivative, or to 1e-3 of the largest one if smaller (a bias before BN has 0 exactly)
    floor = 1e-3 * max(abs(a) for a, _ in pairs.values())
    return {name: abs(a - n) / max(abs(a), abs(n), floor) for name, (a, n) in pairs.items()}


@pytest.mark.parametrize("part", ["G", "D"])
@pytest.mark.parametrize("name", MODELS)
def test_whole_conditional_models_match_finite_differences(name, part):
    """Every parameter's and the input's gradient along a random direction, float64, training mode."""
    rng = np.random.default_rng(1)
    G, D = (m.to(dtype=np.float64) for m in build_gan(name, z_dim=4, g_ch=8, d_ch=2, seed=0, num_classes=3))
    model = G if part == "G" else D
    for pname, p in model.named_parameters():  # random per-class tables and biases (not the symmetric init)
        if pname.endswith("bias") or (p.data.ndim == 2 and p.data.shape[0] == 3):
            p.data = p.data + 0.3 * rng.standard_normal(p.data.shape)
    for m in model.modules():
        if isinstance(m, npsn.SpectralNorm):
            m.power_iteration(3000)  # converged u, v: a forward's power-iteration step moves sigma to second order
    labels = np.array([0, 2, 1, 2, 0, 1], dtype=np.int32)
    x = rng.standard_normal((6, 4)) if part == "G" else np.tanh(rng.standard_normal((6, 3, 32, 32)))
    errors = _directional_check(model, x, labels, rng)
    assert set(errors) == {"input"} | {n for n, _ in model.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-5, f"{name} {part}: {worst} directional derivative off by {errors[worst]:.2e}"


# ---------------------------------------------------------------------------------------------- the PyTorch mirror
def _torch_reference():
    pytest.importorskip("torch")
    from npsn.testing import torch_reference

    return torch_reference


LAYER_CASES = {  # name: (builder(rng) -> float64 module, input shape (npsn layout) or None, number of classes)
    "Embedding": (lambda rng: npsn.Embedding(4, 5, rng=rng), None, 4),
    "SpectralNorm(Embedding)": (lambda rng: npsn.SpectralNorm(npsn.Embedding(4, 5, rng=rng), rng=rng), None, 4),
    "CategoricalConditionalBatchNorm1d": (lambda rng: npsn.CategoricalConditionalBatchNorm1d(5, 4), (8, 5), 4),
    "CategoricalConditionalBatchNorm2d": (lambda rng: npsn.CategoricalConditionalBatchNorm2d(3, 4), (8, 3, 3, 3), 4),
    "Projection(SN)": (lambda rng: npsn.Projection(npsn.SpectralNorm(npsn.Linear(5, 1, rng=rng), rng=rng),
                                                   npsn.SpectralNorm(npsn.Embedding(4, 5, rng=rng), rng=rng)),
                       (8, 5), 4),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_conditional_layers_match_pytorch(name, mode):
    tr = _torch_reference()
    build, shape, _ = LAYER_CASES[name]
    rng = np.random.default_rng(0)
    layer = build(rng).to(dtype=np.float64)
    for pname, p in layer.named_parameters():  # per-class tables that differ between classes
        p.data = p.data + 0.5 * rng.standard_normal(p.data.shape)
    for m in layer.modules():
        if hasattr(m, "running_var"):
            m.running_mean = rng.standard_normal(m.running_mean.shape)
            m.running_var = rng.uniform(0.5, 2, m.running_var.shape)
    layer.train(mode == "train")
    labels = np.array([3, 0, 1, 3, 2, 0, 1, 2], dtype=np.int32)  # every input shape has a batch of 8
    x = None if shape is None else rng.standard_normal(shape)
    mirror = tr.to_torch(layer)
    errors = tr.compare_forward_backward(layer, x, torch_module=mirror, labels=labels)
    expected = {"output"} | ({"input_grad"} if shape else set()) | {f"{n}.grad" for n, _ in layer.named_parameters()}
    assert set(errors) == expected
    assert max(errors.values()) < 1e-12, errors
    # the running statistics (and SN's u, v) moved alike
    theirs = mirror.state_dict()
    for key, value in layer.state_dict().items():
        assert relative_error(value, theirs[key].numpy()) < 1e-12, key


@pytest.mark.parametrize("name", MODELS)
def test_conditional_models_match_pytorch(name):
    """G(z, y) and D(x, y) against their mirrors, float64, training mode: outputs, input and parameter gradients."""
    tr = _torch_reference()
    rng = np.random.default_rng(0)
    G, D = (m.to(dtype=np.float64) for m in build_gan(name, z_dim=8, g_ch=16, d_ch=4, seed=0, num_classes=3))
    for _, p in G.named_parameters():  # conditional BN's tables: classes that differ
        if p.data.ndim == 2 and p.data.shape[0] == 3:
            p.data = p.data + 0.3 * rng.standard_normal(p.data.shape)
    labels = np.array([2, 0, 1, 1, 0, 2], dtype=np.int32)
    z, x = rng.standard_normal((6, 8)), np.tanh(rng.standard_normal((6, 3, 32, 32)))
    for model, inputs in ((G, z), (D, x)):
        errors = tr.compare_forward_backward(model, inputs, labels=labels, grad_scale="module")
        assert len(errors) == 2 + len(list(model.named_parameters()))
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-10, f"{name}: {worst} {errors[worst]:.2e}"


def test_compare_gan_takes_labels():
    tr = _torch_reference()
    rng = np.random.default_rng(0)
    G, D = build_gan("resnet", z_dim=8, g_ch=8, d_ch=4, seed=0, num_classes=3)
    x = np.tanh(rng.standard_normal((4, 3, 32, 32))).astype(np.float32)
    z = rng.standard_normal((4, 8)).astype(np.float32)
    errors = tr.compare_gan(G, D, x, z, y=np.array([0, 1, 2, 1], dtype=np.int32))
    assert max(errors["float64"].values()) < 1e-10, errors
    assert max(v for k, v in errors["float32"].items() if k != "d_input_grad") < 1e-4, errors


@pytest.mark.parametrize("preset", ["cnn", "sngan-projection-resnet-conditional"])
def test_conditional_training_matches_pytorch(preset, tmp_path):
    """Two iterations of a conditional Trainer and its TorchTrainer mirror, from the same state and draws."""
    tr = _torch_reference()
    from npsn.gan.trainer import Trainer, preset_config

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(32, dtype=np.int32) % K
    config = preset_config(preset, num_classes=K, g_ch=16, d_ch=8, batch_size=4, g_batch_size=6, n_dis=2,
                           iterations=10, log_every=1, checkpoint_every=100, sample_every=0)
    trainer = Trainer(config, images, str(tmp_path / "run"), labels=labels)
    mirror = tr.TorchTrainer(trainer)
    x = np.tanh(rng.standard_normal((4, 3, 32, 32))).astype(np.float32)
    z = rng.standard_normal((4, config.z_dim)).astype(np.float32)
    check = tr.compare_training(trainer, mirror, x, z, y=np.array([1, 7, 7, 0], dtype=np.int32))
    assert check["ok"], check
    # the first iteration (before Adam's first steps amplify float32 rounding) agrees closely
    first = zip(check["losses"]["npsn"][0], check["losses"]["torch"][0])
    assert max(abs(a - b) / max(abs(b), 1.0) for a, b in first) < 1e-5, check["losses"]


def test_spectral_diagnostics_of_a_projection_discriminator():
    """The SN embedding has its row (sigma of the class-vector matrix); the bound is None (the projection
    is not a chain of 1-Lipschitz layers); gradient norms take (images, labels) pairs."""
    from npsn.eval.spectral import gradient_norm_estimate, lipschitz_upper_bound, spectral_report

    _, D = build_gan("cnn", g_ch=8, d_ch=4, seed=0, num_classes=K)
    rng = np.random.default_rng(0)
    x = np.tanh(rng.standard_normal((4, 3, 32, 32))).astype(np.float32)
    y = np.array([0, 1, 2, 9], dtype=np.int32)
    for sn in npsn.nn.spectral_layers(D):
        sn[1].power_iteration(2000)  # converged u, v (a random 10 x 256 matrix's top singular values are close)
    D(x, y)
    report = spectral_report(D, n_iterations=50)
    assert [row["layer"] for row in report][-2:] == ["16.linear", "16.embedding"]
    row = report[-1]
    assert row["kind"] == "Embedding"
    assert row["sigma_svd"] == pytest.approx(npsn.exact_spectral_norm(D[16].embedding.weight_orig.data), rel=1e-6)
    assert row["sigma_power"] == pytest.approx(row["sigma_svd"], rel=1e-3)
    assert row["operator_norm"] == pytest.approx(1.0, rel=1e-3) == row["sigma_normalized_svd"]
    assert lipschitz_upper_bound(D, report) is None
    grads = gradient_norm_estimate(D, [(x, y)])
    assert grads["n_samples"] == 4 and grads["grad_norm_max"] > 0
