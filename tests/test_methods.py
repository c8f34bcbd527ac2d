"""The paper's competing discriminators (issue 21): building each, the options and their checks, exact resume.

Every method trains and resumes through scripts/train_cifar.py on the tiny fake CIFAR-10: a run split
at iteration 2 of 4 and resumed logs the uninterrupted run's losses exactly (NumPy). The layers'
gradients are checked in test_gradcheck.py, the PyTorch comparisons (a whole D update to 1e-9) are in
test_torch_compat.py, the GPU path in test_gpu_methods.py.
"""
import json
import os

import numpy as np
import pytest

import npsn
from fake_cifar import write_fake_cifar
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.methods import PAPER_METHODS, layer_weights
from npsn.gan.models import build_gan
from npsn.gan.trainer import SETTINGS, Trainer, TrainConfig, preset_config
from npsn.nn.module import BackwardWithoutForwardError, create_graph
from test_train import run_script

TINY = dict(g_ch=16, d_ch=8, batch_size=8, n_dis=2, log_every=1, checkpoint_every=100, sample_every=0)
TINY_ARGS = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "100",
             "--sample-every", "0"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from npsn.data.cifar10 import load_cifar10

    archive = write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)
    return archive, load_cifar10(archive)[0]


def log_losses(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [(r["iteration"], r["loss_d"], r["loss_g"], r["sigma"]) for r in map(json.loads, f)]


def method_args(method):
    """The options of a PAPER_METHODS row."""
    values = PAPER_METHODS[method]
    return ["--d-norm", values["d_norm"], "--loss", values["loss"], "--weight-clip", str(values["weight_clip"])]


# --------------------------------------------------------------------------------------------- resume
# one run per family: the gradient penalty (its epsilon stream), BN (two passes, running statistics), LN, WN,
# orthonormal (init and penalty), clipping with the standard and with the Wasserstein loss, a Table 1 setting
FAMILIES = {
    "wgan-gp": method_args("wgan-gp"),
    "gan-gp with setting A": method_args("gan-gp") + ["--setting", "A"],
    "bn": method_args("bn"),
    "ln": method_args("ln"),
    "wn": method_args("wn"),
    "orthonormal": method_args("orthonormal"),
    "weight-clipping": method_args("weight-clipping"),
    "weight clipping, wasserstein, setting F": ["--d-norm", "none", "--loss", "wasserstein", "--weight-clip", "0.01",
                                                "--setting", "F"],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_method_resumes_exactly(family, images, tmp_path):
    archive, imgs = images
    n_dis = [] if "--setting" in FAMILIES[family] else ["--n-dis", "2"]  # else the setting's (1 or 5)
    common = ["--data", archive, "--preset", "paper-cnn-nonsaturating", *TINY_ARGS, *n_dis, *FAMILIES[family]]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert run_script(*common, "--iterations", "4", "--out", straight) == 0
    with open(os.path.join(straight, "config.json")) as f:
        config = TrainConfig.from_dict(json.load(f))
    # the split run: 2 of 4 iterations (as if interrupted), then resumed by the script
    os.makedirs(split)
    with open(os.path.join(split, "config.json"), "w") as f:
        json.dump(dict(config.__dict__, data=os.path.abspath(archive)), f)
    Trainer(config, imgs, split).run(until=2, progress=False)
    meta = load_checkpoint(os.path.join(split, "checkpoint.npz"))[1]
    assert meta["iteration"] == 2 and ("penalty_noise_state" in meta) == config.loss.endswith("-gp")
    assert run_script("--resume", split) == 0
    assert log_losses(split) == log_losses(straight)
    assert all(np.isfinite(loss_d) and np.isfinite(loss_g) for _, loss_d, loss_g, _ in log_losses(split))


def test_the_options_are_recorded_and_fixed_on_resume(images, tmp_path, capsys):
    archive, _ = images
    out = str(tmp_path / "run")
    assert run_script("--data", archive, *TINY_ARGS, "--n-dis", "2", "--iterations", "2", "--out", out,
                      "--setting", "D", "--beta2", "0.99", "--d-norm", "ortho", "--weight-clip", "0.05") == 0
    with open(os.path.join(out, "config.json")) as f:
        stored = json.load(f)
    # the setting's lr and beta1, the explicit beta2 and n_dis over it
    assert (stored["setting"], stored["lr"], stored["beta1"], stored["beta2"], stored["n_dis"]) == ("D", 1e-3, 0.5,
                                                                                                   0.99, 2)
    assert (stored["d_norm"], stored["weight_clip"], stored["loss"]) == ("ortho", 0.05, "hinge")
    assert "sn" not in stored
    capsys.readouterr()
    for option in (["--d-norm", "wn"], ["--weight-clip", "0.01"], ["--setting", "A"], ["--loss", "wgan-gp"],
                   ["--no-sn"]):
        assert run_script("--resume", out, "--iterations", "3", *option) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot change on resume" in err, err
    assert run_script("--resume", out, "--iterations", "3", "--setting", "D", "--d-norm", "ortho") == 0


def test_settings_are_table_1():
    assert SETTINGS == {"A": dict(lr=1e-4, beta1=0.5, beta2=0.9, n_dis=5), "B": dict(lr=1e-4, beta1=0.5, beta2=0.999,
                        n_dis=1), "C": dict(lr=2e-4, beta1=0.5, beta2=0.999, n_dis=1), "D": dict(lr=1e-3, beta1=0.5,
                        beta2=0.9, n_dis=5), "E": dict(lr=1e-3, beta1=0.5, beta2=0.999, n_dis=5),
                        "F": dict(lr=1e-3, beta1=0.9, beta2=0.999, n_dis=5)}
    c = preset_config("paper-cnn-nonsaturating", setting="C")
    assert (c.lr, c.beta1, c.beta2, c.n_dis) == (2e-4, 0.5, 0.999, 1)  # the preset's own values: setting C


def test_a_run_that_recorded_sn_false_resumes_without_sn(images, tmp_path):
    """config.json and checkpoint of an npsn before --d-norm ("sn": false, no d_norm) resume as d_norm none."""
    from npsn.gan.checkpoint import save_checkpoint

    archive, imgs = images
    config = preset_config("cnn", iterations=4, d_norm="none", **TINY)
    straight = Trainer(config, imgs, str(tmp_path / "straight"))
    straight.run(progress=False)
    split = str(tmp_path / "split")
    Trainer(config, imgs, split).run(until=2, progress=False)
    old_config = {k: v for k, v in config.__dict__.items() if k not in ("d_norm", "weight_clip", "setting")}
    old_config["sn"] = False
    with open(os.path.join(split, "config.json"), "w") as f:
        json.dump(dict(old_config, data=os.path.abspath(archive)), f)
    path = os.path.join(split, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    save_checkpoint(path, arrays, dict(meta, config=old_config))
    assert run_script("--resume", split) == 0
    assert log_losses(split) == log_losses(straight.out_dir)


# --------------------------------------------------------------------------------------------- the models
def test_each_d_norm_builds_the_papers_layers():
    kinds = {}
    for d_norm in ("sn", "none", "bn", "ln", "wn", "ortho"):
        _, D = build_gan("cnn", g_ch=8, d_ch=8, seed=0, d_norm=d_norm)
        kinds[d_norm] = [type(m).__name__ for m in D]
        assert D(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 1)
    assert kinds["bn"].count("BatchNorm2d") == kinds["ln"].count("LayerNorm") == kinds["bn"].count("Bias") == 6
    assert kinds["bn"][:3] == ["ToChannelsLast", "Conv2d", "LeakyReLU"]  # the input layer is not normalized
    assert kinds["wn"].count("WeightNorm") == kinds["sn"].count("SpectralNorm") == 8
    _, bn = build_gan("cnn", g_ch=8, d_ch=8, d_norm="bn")
    assert not any(m.affine for m in bn if isinstance(m, npsn.BatchNorm2d))  # no gamma (nor a beta of BN's own)
    assert [m.bias is None for m in bn if isinstance(m, npsn.Conv2d)] == [False] + 6 * [True]
    # none and wn start from the same weights for one seed (SN draws its u, v from the same stream)
    weights = {d: [p.data for p in layer_weights(build_gan("cnn", g_ch=8, d_ch=8, seed=4, d_norm=d)[1])]
               for d in ("none", "wn")}
    for a, b in zip(weights["none"], weights["wn"]):
        np.testing.assert_array_equal(a, b)


def test_orthonormal_initialization():
    _, D = build_gan("cnn", g_ch=8, d_ch=8, seed=0, d_norm="ortho")
    for p in layer_weights(D):
        s = np.linalg.svd(p.data.reshape(p.data.shape[0], -1).astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(s, 1.0, atol=1e-6)
    assert all(not np.any(m.bias.data) for m in D if isinstance(m, (npsn.Conv2d, npsn.Linear)))


def test_weight_clipping_clips_weights_not_biases(images, tmp_path):
    _, imgs = images
    config = preset_config("paper-cnn-nonsaturating", iterations=1, **dict(TINY, **PAPER_METHODS["weight-clipping"]))
    trainer = Trainer(config, imgs, str(tmp_path / "run"))
    biases = [p for n, p in trainer.D.named_parameters() if n.endswith("bias")]
    for p in biases:
        p.data[...] = 0.5
    trainer.train_iteration()
    weights = [p for n, p in trainer.D.named_parameters() if n.endswith("weight")]
    assert len(weights) == 8 and all(float(np.abs(p.data).max()) <= 0.01 for p in weights)
    assert all(float(np.abs(p.data).min()) > 0.49 for p in biases)  # moved by Adam's lr, never clipped


def test_gradient_penalty_of_a_linear_critic():
    """D(x) = <w, x> + b: grad_x D = w everywhere, so P = lambda (||w|| - 1)^2 and dP/dw = 2 lambda (||w|| - 1) w/||w||."""
    from npsn.gan.gradient_penalty import gradient_penalty

    rng = np.random.default_rng(0)
    D = npsn.Sequential(npsn.Flatten(), npsn.Linear(12, 1, rng=rng)).to(dtype=np.float64)
    w = D[1].weight.data[0]
    norm = np.linalg.norm(w)
    penalty = gradient_penalty(D, rng.standard_normal((5, 12)), weight=10.0)
    np.testing.assert_allclose(float(penalty), 10 * (norm - 1) ** 2, rtol=1e-12)
    np.testing.assert_allclose(D[1].weight.grad[0], 20 * (norm - 1) * w / norm, rtol=1e-12)
    assert D[1].bias.grad is None  # the bias does not enter grad_x D


def test_create_graph_keeps_caches_for_one_double_backward():
    layer = npsn.Linear(3, 2, rng=np.random.default_rng(0))
    x = np.ones((4, 3))
    layer(x)
    with create_graph(layer):
        assert layer.creates_graph
        layer.backward(np.ones((4, 2)))
    assert not layer.creates_graph and "creates_graph" not in layer.__dict__
    layer.double_backward(np.ones((4, 3)))  # consumes the kept cache
    with pytest.raises(BackwardWithoutForwardError):
        layer.double_backward(np.ones((4, 3)))
    bn = npsn.BatchNorm2d(2)
    bn(np.ones((2, 2, 2, 2)))
    with pytest.raises(NotImplementedError, match="BatchNorm2d has no double backward"):
        bn.double_backward(np.ones((2, 2, 2, 2)))


def test_a_batchnorm_discriminator_sees_each_batch_with_its_own_statistics():
    """The D update of a BN D = a D whose real and generated batches are normalized separately (two passes)."""
    from npsn.gan.losses import nonsaturating_d
    from npsn.gan.updates import discriminator_update
    from npsn.optim import SGD

    G, D = build_gan("cnn", g_ch=8, d_ch=4, seed=1, d_norm="bn")
    rng = np.random.default_rng(2)
    x, z = rng.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32), rng.standard_normal((3, 128)).astype(np.float32)
    reference = [p.data.copy() for p in D.parameters()]
    # by hand: each batch's own forward and backward
    logits_real = D(x)
    D.zero_grad()
    _, grad_real, _ = nonsaturating_d(logits_real, logits_real)
    D.backward(grad_real)
    real_grads = [p.grad.copy() for p in D.parameters()]
    D.zero_grad()
    logits_fake = D(G(z))
    loss, _, grad_fake = nonsaturating_d(logits_real, logits_fake)
    D.backward(grad_fake)
    expected = [a + p.grad for a, p in zip(real_grads, D.parameters())]
    for p, r in zip(D.parameters(), reference):
        p.data = r.copy()
    for m in D:
        if isinstance(m, npsn.BatchNorm2d):  # the same running statistics as before
            m.running_mean[...] = 0
            m.running_var[...] = 1
    got_loss = discriminator_update(G, D, SGD(D.parameters(), lr=0.0), nonsaturating_d, x, z)
    np.testing.assert_allclose(float(got_loss), float(loss), rtol=1e-6)
    for p, e in zip(D.parameters(), expected):
        np.testing.assert_allclose(p.grad, e, rtol=1e-5, atol=1e-7)
