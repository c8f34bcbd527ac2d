"""Presets (issue 14): each builds the architecture its source defines, G and D batch sizes, noise streams, resume.

The expected parameter shapes below are written from the sources' definitions, in their own layouts
(Chainer's Linear W is (out, in), Convolution2D W (out, in, k, k), Deconvolution2D W (in, out, k, k): the
same as PyTorch's, hence npsn's), layer by layer:

* chainer-gan-lib ``common/net.py``: ``DCGANGenerator()`` and ``SNDCGANDiscriminator()`` (defaults);
* sngan_projection ``gen_models/resnet_32.py`` + ``gen_models/resblocks.py`` (ch=256) and
  ``dis_models/snresnet_32.py`` + ``dis_models/resblocks.py`` (ch=128);
* the paper's Table 3 (arXiv 1802.05957) for ``cnn``.
"""
import collections
import json
import os

import numpy as np
import pytest

from fake_cifar import write_fake_cifar
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.models import gan_from_config, sample_latent
from npsn.gan.rundir import log_records
from npsn.gan.trainer import PRESET_SOURCES, PRESETS, Trainer, TrainConfig, preset_config
from npsn.nn.module import Sequential
from test_train import run_script



def conv(cout, cin, k, bias=True):
    return [(cout, cin, k, k)] + ([(cout,)] if bias else [])


def bn(c):
    return [(c,), (c,)]  # gamma, beta


# ----------------------------------------------------------------------------- expected from the sources
def dcgan_generator(bias_free=False):
    """chainer-gan-lib DCGANGenerator(n_hidden=128, bottom_width=4, ch=512): l0, dc1..dc4, bn0..bn3."""
    return ([(8192, 128), (8192,)] + [(512, 256, 4, 4), (256,)] + [(256, 128, 4, 4), (128,)]
            + [(128, 64, 4, 4), (64,)] + [(64, 3, 3, 3), (3,)] + bn(8192) + bn(256) + bn(128) + bn(64))


def sndcgan_discriminator():
    """chainer-gan-lib SNDCGANDiscriminator(bottom_width=4, ch=512): c0_0 ... c3_0, l4."""
    return (conv(64, 3, 3) + conv(128, 64, 4) + conv(128, 128, 3) + conv(256, 128, 4) + conv(256, 256, 3)
            + conv(512, 256, 4) + conv(512, 512, 3) + [(1, 8192), (1,)])


def paper_cnn_generator():
    """Table 3's G (dense, three 4x4 s2 deconvs with BN, 3x3 s1 conv to 3) + npsn's BN(512) after the dense layer."""
    return ([(8192, 128), (8192,)] + bn(512) + [(512, 256, 4, 4), (256,)] + bn(256) + [(256, 128, 4, 4), (128,)]
            + bn(128) + [(128, 64, 4, 4), (64,)] + bn(64) + conv(3, 64, 3))


def paper_cnn_discriminator():
    """Table 3's D: 3x3 64, 4x4 64, 3x3 128, 4x4 128, 3x3 256, 4x4 256, 3x3 512, dense 1."""
    return (conv(64, 3, 3) + conv(64, 64, 4) + conv(128, 64, 3) + conv(128, 128, 4) + conv(256, 128, 3)
            + conv(256, 256, 4) + conv(512, 256, 3) + [(1, 8192), (1,)])


def cond_bn(c, n_classes):
    """CategoricalConditionalBatchNormalization(c, n_classes): gammas, betas = EmbedID(n_classes, c) each."""
    return [(n_classes, c), (n_classes, c)]


def resnet_generator(ch=256, n_classes=0):
    """sngan_projection ResNetGenerator(ch=256, dim_z=128, bottom_width=4): l1, block2..4 (b1, c1, b2, c2, c_sc),
    b5, c5; with n_classes the blocks' b1, b2 are conditional (b5 stays a plain BatchNormalization)."""
    block_bn = cond_bn(ch, n_classes) if n_classes else bn(ch)
    block = block_bn + conv(ch, ch, 3) + block_bn + conv(ch, ch, 3) + conv(ch, ch, 1)
    return [(16 * ch, 128), (16 * ch,)] + 3 * block + bn(ch) + conv(3, ch, 3)


def resnet_discriminator(ch=128, final_bias=False, n_classes=0):
    """sngan_projection SNResNetProjectionDiscriminator(ch=128, n_classes=0): OptimizedBlock(3, ch), Block(down),
    two Blocks, l5 = SNLinear(ch, 1, nobias=True); with n_classes also l_y = SNEmbedID(n_classes, ch)."""
    optimized = conv(ch, 3, 3) + conv(ch, ch, 3) + conv(ch, 3, 1)
    down = conv(ch, ch, 3) + conv(ch, ch, 3) + conv(ch, ch, 1)
    plain = conv(ch, ch, 3) + conv(ch, ch, 3)
    return optimized + down + 2 * plain + [(1, ch)] + ([(1,)] if final_bias else []) + \
        ([(n_classes, ch)] if n_classes else [])


EXPECTED = {
    "cnn": (paper_cnn_generator(), paper_cnn_discriminator()),
    "paper-cnn-hinge": (paper_cnn_generator(), paper_cnn_discriminator()),
    "paper-cnn-nonsaturating": (paper_cnn_generator(), paper_cnn_discriminator()),
    "chainer-gan-lib-sndcgan": (dcgan_generator(), sndcgan_discriminator()),
    "resnet": (resnet_generator(), resnet_discriminator(final_bias=True)),
    "sngan-projection-resnet": (resnet_generator(), resnet_discriminator(final_bias=False)),
    # configs/sn_cifar10.yml: n_classes 10
    "sngan-projection-resnet-conditional": (resnet_generator(n_classes=10),
                                            resnet_discriminator(final_bias=False, n_classes=10)),
}

# The parameter counts these definitions give (quoted in the preset table of docs/training.md).
COUNTS = {
    "cnn": (3_813_379, 2_935_873), "paper-cnn-hinge": (3_813_379, 2_935_873),
    "paper-cnn-nonsaturating": (3_813_379, 2_935_873), "chainer-gan-lib-sndcgan": (3_828_739, 5_860_865),
    "resnet": (4_276_739, 1_053_825), "sngan-projection-resnet": (4_276_739, 1_053_824),
    "sngan-projection-resnet-conditional": (4_304_387, 1_055_104),
}


def shapes(module):
    return collections.Counter(tuple(p.data.shape) for p in module.parameters())


def size(module):
    return sum(int(np.prod(p.data.shape)) for p in module.parameters())


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = gan_from_config(preset_config(name))
        return cache[name]
    return get


def test_every_preset_is_tested_and_has_a_source():
    assert set(EXPECTED) == set(PRESETS) == set(PRESET_SOURCES) == set(COUNTS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_its_sources_parameters(built, name):
    G, D = built(name)
    g_expected, d_expected = EXPECTED[name]
    assert shapes(G) == collections.Counter(g_expected)
    assert shapes(D) == collections.Counter(d_expected)
    counts = (sum(int(np.prod(s)) for s in g_expected), sum(int(np.prod(s)) for s in d_expected))
    assert (size(G), size(D)) == counts == COUNTS[name]


def layer_names(model):
    return [type(m).__name__ for m in model.children()]


def test_sndcgan_layers_follow_chainer_gan_lib(built):
    G, D = built("chainer-gan-lib-sndcgan")
    assert layer_names(G) == ["Linear", "BatchNorm1d", "ReLU", "Reshape",
                              "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU",
                              "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "Tanh", "ToChannelsFirst"]
    sd = G.state_dict()
    assert sd["1.running_mean"].shape == sd["1.running_var"].shape == (8192,)  # bn0: every dense output
    assert sd["13.weight"].shape == (64, 3, 3, 3)  # dc4: Deconvolution2D(64, 3, 3, 1, 1)
    assert layer_names(D) == ["ToChannelsLast"] + ["SpectralNorm", "LeakyReLU"] * 7 + ["Flatten", "SpectralNorm"]
    slopes = {m.negative_slope for m in D.children() if type(m).__name__ == "LeakyReLU"}
    assert slopes == {0.2}  # F.leaky_relu's default
    widths = [m.module.weight.data.shape[0] for m in D.children() if type(m).__name__ == "SpectralNorm"]
    assert widths == [64, 128, 128, 256, 256, 512, 512, 1]
    assert {"1.weight_u", "1.weight_v", "1.weight_orig", "16.weight_orig", "16.bias"} <= set(D.state_dict())


def test_paper_cnn_layers_follow_table_3(built):
    G, D = built("paper-cnn-hinge")
    assert layer_names(G)[:4] == ["Linear", "Reshape", "BatchNorm2d", "ReLU"]  # npsn's BN over 512 channels
    assert layer_names(G)[-3:] == ["Conv2d", "Tanh", "ToChannelsFirst"]
    slopes = {m.negative_slope for m in D.children() if type(m).__name__ == "LeakyReLU"}
    assert slopes == {0.1}
    widths = [m.module.weight.data.shape[0] for m in D.children() if type(m).__name__ == "SpectralNorm"]
    assert widths == [64, 64, 128, 128, 256, 256, 512, 1]


def test_authors_resnet_has_no_bias_on_ds_dense_layer(built):
    _, D = built("sngan-projection-resnet")
    last = list(D.children())[-1]
    assert type(last).__name__ == "SpectralNorm" and last.module.bias is None
    assert "7.bias" not in D.state_dict() and "7.weight_orig" in D.state_dict()
    _, legacy = built("resnet")
    assert list(legacy.children())[-1].module.bias is not None


def test_presets_name_their_values():
    c = preset_config("sngan-projection-resnet")
    assert (c.preset, c.model, c.loss, c.n_dis, c.batch_size, c.g_batch_size, c.lr, c.beta1, c.beta2,
            c.lr_decay, c.iterations, c.pixels, c.d_final_bias, c.z_dist) == (
        "sngan-projection-resnet", "resnet", "hinge", 5, 64, 128, 2e-4, 0.0, 0.9, "linear", 50_000,
        "dequantized", False, "normal")
    c = preset_config("chainer-gan-lib-sndcgan")
    assert (c.model, c.loss, c.n_dis, c.batch_size, c.lr, c.beta1, c.beta2, c.z_dist, c.iterations) == (
        "sndcgan", "nonsaturating", 1, 64, 2e-4, 0.5, 0.999, "uniform", 100_000)
    assert preset_config("paper-cnn-nonsaturating").loss == "nonsaturating"
    # the earlier presets are unchanged, so their runs resume exactly
    for name in ("cnn", "resnet"):
        c = preset_config(name)
        assert (c.g_batch_size in (0, c.batch_size), c.z_dist, c.pixels, c.d_final_bias) == (True, "normal", "unit",
                                                                                              True)
    # a config.json of an older npsn (no preset key) reads as its model's preset
    old = {k: v for k, v in preset_config("resnet").__dict__.items() if k not in ("preset", "g_batch_size")}
    assert TrainConfig.from_dict(old).preset == "resnet" and TrainConfig.from_dict(old).g_batch_size == 0


def test_uniform_z():
    z = sample_latent(np.random.default_rng(0), 1000, 128, "uniform")
    assert z.dtype == np.float32 and z.min() >= -1 and z.max() < 1 and abs(float(z.mean())) < 0.01
    normal = sample_latent(np.random.default_rng(0), 4, 8, "normal")
    np.testing.assert_array_equal(normal, np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from npsn.data.cifar10 import load_cifar10
    archive = write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)
    return archive, load_cifar10(archive)[0]


def tiny(preset, **overrides):
    values = dict(iterations=6, g_ch=16, d_ch=8, batch_size=8, log_every=1, checkpoint_every=100, sample_every=0)
    values.update(overrides)
    return preset_config(preset, **values)


def test_g_and_d_batch_sizes_in_the_updates(images, tmp_path):
    _, imgs = images
    trainer = Trainer(tiny("sngan-projection-resnet", g_batch_size=12, n_dis=2), imgs, str(tmp_path / "r"))
    seen = {"G": [], "D": []}
    for name, model in (("G", trainer.G), ("D", trainer.D)):
        forward = model.forward

        def record(x, forward=forward, name=name):
            seen[name].append(x.shape[0])
            return forward(x)
        model.forward = record
    trainer.train_iteration()
    # two D updates: G(z) on 8 z, D on 8 real + 8 generated; then the G update: G and D on 12
    assert seen == {"G": [8, 8, 12], "D": [16, 16, 12]}
    bn = next(m for m in trainer.G.modules() if type(m).__name__ == "BatchNorm2d")
    assert int(bn.num_batches_tracked) == 3  # G's BN saw three batches (two of 8, one of 12)


def test_dequantized_pixels_fill_each_pixels_interval(images, tmp_path):
    _, imgs = images
    trainer = Trainer(tiny("sngan-projection-resnet"), imgs, str(tmp_path / "r"))
    state = trainer.stream.state_dict()
    x = trainer.real_batch()
    trainer.stream.load_state_dict(state)
    idx = trainer.stream.next_indices()
    low = imgs[idx].astype(np.float32) / 128 - 1
    assert x.dtype == np.float32 and np.all(x >= low) and np.all(x < low + 1 / 128 + 1e-6)
    assert np.all(x > low) or np.mean(x > low) > 0.99  # noise was added
    assert x.min() >= -1 and x.max() < 1


def log_losses(run_dir):
    return [(r["iteration"], r["loss_d"], r["loss_g"], r["sigma"]) for r in log_records(run_dir)]


def test_resume_is_exact_with_a_g_batch_and_the_dequantization_noise(images, tmp_path):
    archive, imgs = images
    common = ["--data", archive, "--preset", "sngan-projection-resnet", "--g-ch", "16", "--d-ch", "8",
              "--batch-size", "8", "--g-batch-size", "12", "--n-dis", "2", "--log-every", "1",
              "--checkpoint-every", "100", "--sample-every", "0"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert run_script(*common, "--iterations", "6", "--out", straight) == 0
    config = tiny("sngan-projection-resnet", g_batch_size=12, n_dis=2)
    os.makedirs(split)
    with open(os.path.join(split, "config.json"), "w") as f:
        json.dump(dict(config.__dict__, data=os.path.abspath(archive)), f)
    Trainer(config, imgs, split).run(until=3, progress=False)
    meta = load_checkpoint(os.path.join(split, "checkpoint.npz"))[1]
    assert meta["config"]["g_batch_size"] == 12 and "pixel_noise_state" in meta
    assert run_script("--resume", split) == 0
    assert log_losses(split) == log_losses(straight)
    with open(os.path.join(straight, "config.json")) as f:
        stored = json.load(f)
    assert stored["preset"] == "sngan-projection-resnet"
    assert stored["source"] == PRESET_SOURCES["sngan-projection-resnet"]


def test_uniform_z_run_and_options_fixed_on_resume(images, tmp_path, capsys):
    archive, _ = images
    out = str(tmp_path / "run")
    assert run_script("--data", archive, "--preset", "chainer-gan-lib-sndcgan", "--g-ch", "16", "--d-ch", "8",
                      "--batch-size", "8", "--iterations", "2", "--sample-every", "0", "--out", out) == 0
    with open(os.path.join(out, "config.json")) as f:
        stored = json.load(f)
    assert (stored["preset"], stored["model"], stored["z_dist"], stored["loss"]) == (
        "chainer-gan-lib-sndcgan", "sndcgan", "uniform", "nonsaturating")
    capsys.readouterr()
    for option in (["--g-batch-size", "4"], ["--z-dist", "normal"], ["--pixels", "dequantized"],
                   ["--d-final-bias", "no"], ["--preset", "cnn"]):
        assert run_script("--resume", out, "--iterations", "3", *option) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot change on resume" in err, err


def test_a_checkpoint_of_another_architecture_is_one_error(images, tmp_path):
    _, imgs = images
    run_dir = str(tmp_path / "r")
    Trainer(tiny("cnn", iterations=1), imgs, run_dir).run(progress=False)
    with pytest.raises(ValueError, match=r"^the checkpoint holds model='cnn' but this run builds model='sndcgan'$"):
        Trainer(tiny("chainer-gan-lib-sndcgan", iterations=2), imgs, run_dir, resume=True)
    with pytest.raises(ValueError, match="d_final_bias=True but this run builds d_final_bias=False"):
        Trainer(tiny("cnn", iterations=2, d_final_bias=False), imgs, run_dir, resume=True)


def test_sequential_models():
    G, D = gan_from_config(tiny("chainer-gan-lib-sndcgan"))
    assert isinstance(G, Sequential) and isinstance(D, Sequential)


@pytest.mark.parametrize("name, kwargs", [("sndcgan", {}), ("resnet", {"d_final_bias": False})])
def test_new_model_variants_match_pytorch(name, kwargs):
    """BatchNorm1d over the dense outputs, the 3x3 stride-1 deconvolution, slope 0.2, the bias-free SN dense layer:
    forward and backward against the PyTorch mirror in float64."""
    pytest.importorskip("torch")
    from npsn.gan.models import build_gan
    from npsn.testing.torch_reference import compare_forward_backward
    G, D = build_gan(name, g_ch=16, d_ch=8, **kwargs)
    G.to(dtype=np.float64)
    D.to(dtype=np.float64)
    z = np.random.default_rng(0).uniform(-1, 1, (4, 128))
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32))
    for model, inputs in ((G, z), (D, x)):
        errors = compare_forward_backward(model, inputs, grad_scale="module")
        assert max(errors.values()) < 1e-12, errors


def test_a_run_of_the_earlier_npsn_resumes_exactly(images, tmp_path):
    """A config.json and checkpoint written before the presets (no preset, g_batch_size, z_dist, pixels,
    d_final_bias, source, pixel_noise_state) resume as the `cnn` preset and reproduce the uninterrupted run."""
    from npsn.gan.checkpoint import save_checkpoint
    archive, imgs = images
    config = tiny("cnn", iterations=4)
    straight = Trainer(config, imgs, str(tmp_path / "straight"))
    straight.run(progress=False)
    split = str(tmp_path / "split")
    Trainer(config, imgs, split).run(until=2, progress=False)
    new_fields = ("preset", "g_batch_size", "z_dist", "pixels", "d_final_bias")
    old_config = {k: v for k, v in config.__dict__.items() if k not in new_fields}
    with open(os.path.join(split, "config.json"), "w") as f:
        json.dump(dict(old_config, data=os.path.abspath(archive)), f)
    path = os.path.join(split, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    meta = {"iteration": meta["iteration"], "config": old_config, "noise_state": meta["noise_state"]}
    save_checkpoint(path, arrays, meta)
    assert run_script("--resume", split) == 0
    assert log_losses(split) == log_losses(straight.out_dir)
    with open(os.path.join(split, "config.json")) as f:
        assert json.load(f)["preset"] == "cnn"
