"""Class-conditional training end to end (issue 11) on the tiny fake CIFAR-10 of tests/fake_cifar.py.

The labels through the minibatch stream and into D, G's labels from their own checkpointed stream
(the same ones to G and to D's fake half in a D update, fresh ones in the G update), exact resume,
unconditional runs untouched, the per-class sample grid, and scripts/sample.py --class / --grid.
"""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fake_cifar import LABEL_NAMES, write_fake_cifar
from npsn.data.cifar10 import CIFAR10_CLASSES, MinibatchStream, load_cifar10, load_label_names
from npsn.eval.evaluation import cycle_labels, generate, load_run
from npsn.gan.checkpoint import load_checkpoint, save_checkpoint
from npsn.gan.rundir import log_records
from npsn.gan.trainer import GRID_COLUMNS, PRESET_SOURCES, PRESETS, Trainer, TrainConfig, preset_config
from npsn.utils.images import make_grid, to_uint8
from script_runner import run_main
from test_cli_errors import interrupt_at_iteration

TINY = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--log-every", "1"]
TINY_CONFIG = dict(g_ch=16, d_ch=8, batch_size=8, log_every=1, checkpoint_every=100, sample_every=0)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


@pytest.fixture(scope="module")
def data(archive):
    return load_cifar10(archive)


@pytest.fixture(scope="module")
def cond_run(archive, tmp_path_factory):
    """A finished 2-iteration conditional cnn run, trained through the script."""
    run = str(tmp_path_factory.mktemp("cond") / "run")
    assert run_main("train_cifar.py", "--data", archive, "--conditional", *TINY, "--iterations", "2",
                    "--sample-every", "0", "--out", run) == 0
    return run


def losses(log):
    return [(r["iteration"], r["loss_d"], r["loss_g"], r["sigma"]) for r in log]


def assert_same_checkpoints(a, b):
    (arrays_a, meta_a), (arrays_b, meta_b) = load_checkpoint(a), load_checkpoint(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)
    for key in ("noise_state", "pixel_noise_state", "label_noise_state", "iteration"):
        assert meta_a.get(key) == meta_b.get(key), key


# --------------------------------------------------------------------------------------------- data
def test_class_names_come_from_batches_meta(archive):
    assert load_label_names(archive) == list(CIFAR10_CLASSES) == LABEL_NAMES


def test_the_stream_gives_labels_without_changing_its_draws(data):
    images, labels = data
    plain, labelled, indices = (MinibatchStream(len(images), 8, seed=3) for _ in range(3))
    for _ in range(30):  # several epochs of 12 batches
        idx = indices.next_indices()
        x = plain.next_batch(images)
        x2, y = labelled.next_batch(images, labels)
        np.testing.assert_array_equal(x, images[idx])
        np.testing.assert_array_equal(x2, images[idx])
        np.testing.assert_array_equal(y, labels[idx])
    assert plain.state_dict() == labelled.state_dict() == indices.state_dict()


# --------------------------------------------------------------------------------------------- config
def test_the_conditional_preset_is_the_authors_sn_cifar10_yml():
    """configs/sn_cifar10.yml differs from sn_cifar10_unconditional.yml only in n_classes 10 and conditional: True."""
    assert PRESETS["sngan-projection-resnet-conditional"] == dict(PRESETS["sngan-projection-resnet"], num_classes=10)
    assert "configs/sn_cifar10.yml" in PRESET_SOURCES["sngan-projection-resnet-conditional"]
    assert all(values.get("num_classes", 0) == 0 for name, values in PRESETS.items() if "conditional" not in name)


def test_older_configs_are_unconditional():
    values = {k: v for k, v in preset_config("cnn").__dict__.items() if k != "num_classes"}
    assert TrainConfig.from_dict(values).num_classes == 0


def test_conditional_config_is_recorded(cond_run):
    config = json.load(open(os.path.join(cond_run, "config.json")))
    assert config["num_classes"] == 10
    _, meta = load_checkpoint(os.path.join(cond_run, "checkpoint.npz"))
    assert meta["config"]["num_classes"] == 10
    assert meta["class_names"] == LABEL_NAMES
    assert meta["label_noise_state"]["bit_generator"] == "PCG64"


# --------------------------------------------------------------------------------------------- the updates
def record_calls(model, calls, tag):
    """Wrap ``model.forward`` so that each call appends (tag, labels as a host array)."""
    original = model.forward

    def forward(x, y):
        calls.append((tag, np.array(y)))
        return original(x, y)

    model.forward = forward


def test_labels_reach_d_and_g_as_documented(data, tmp_path):
    images, labels = data
    config = preset_config("cnn", iterations=2, num_classes=10, n_dis=2, g_batch_size=6, **TINY_CONFIG)
    trainer = Trainer(config, images, str(tmp_path / "run"), labels=labels)
    twin = MinibatchStream(len(images), 8, seed=0)  # the trainer's stream, replayed
    label_rng = np.random.default_rng([0, 7])
    calls = []
    record_calls(trainer.G, calls, "G")
    record_calls(trainer.D, calls, "D")
    trainer.train_iteration()
    # two D updates: G(z, y_fake), then D on [real; fake] with [real labels; y_fake]
    for update in range(2):
        (g_tag, y_fake), (d_tag, y_d) = calls[2 * update: 2 * update + 2]
        assert (g_tag, d_tag) == ("G", "D")
        np.testing.assert_array_equal(y_d[:8], labels[twin.next_indices()])
        np.testing.assert_array_equal(y_fake, label_rng.integers(0, 10, 8))
        np.testing.assert_array_equal(y_d[8:], y_fake)
    # the G update: fresh labels (g_batch_size of them), the same to G and to D
    (g_tag, y_g), (d_tag, y_d) = calls[4:]
    np.testing.assert_array_equal(y_g, label_rng.integers(0, 10, 6))
    np.testing.assert_array_equal(y_d, y_g)
    assert all(y.dtype == np.int32 for _, y in calls)


def test_a_conditional_run_needs_valid_labels(data, tmp_path):
    images, labels = data
    config = preset_config("cnn", iterations=1, num_classes=10, **TINY_CONFIG)
    with pytest.raises(ValueError, match="needs the labels"):
        Trainer(config, images, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="outside 0..9"):
        Trainer(config, images, str(tmp_path / "b"), labels=labels + 1)
    with pytest.raises(ValueError, match="3 class names for 10"):
        Trainer(config, images, str(tmp_path / "c"), labels=labels, class_names=["a", "b", "c"])


def test_an_unconditional_run_never_draws_labels(data, tmp_path):
    images, labels = data
    trainer = Trainer(preset_config("cnn", iterations=2, **TINY_CONFIG), images, str(tmp_path / "run"), labels=labels)
    assert trainer.label_noise is None and trainer.z_fixed.shape == (64, 128)
    trainer.run(progress=False)
    arrays, meta = load_checkpoint(trainer.checkpoint_path)
    assert "label_noise_state" not in meta and "class_names" not in meta
    assert not any("embedding" in key for key in arrays)


# --------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("preset, extra", [
    ("cnn", ["--n-dis", "2"]),
    # the authors' conditional run: resnet, n_dis 5 (here 2), G batch != D batch, dequantized pixels, linear decay
    ("sngan-projection-resnet-conditional", ["--n-dis", "2", "--g-batch-size", "12"]),
])
def test_resume_of_a_conditional_run_is_exact(archive, tmp_path, monkeypatch, preset, extra):
    common = ["--data", archive, "--preset", preset, *TINY, "--checkpoint-every", "100", "--sample-every", "0",
              "--iterations", "5", *extra] + (["--conditional"] if preset == "cnn" else [])
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert run_main("train_cifar.py", *common, "--out", straight) == 0
    with monkeypatch.context() as patch:
        interrupt_at_iteration(patch, 2)  # a Ctrl-C after 2 of 5 iterations: a checkpoint at 2
        assert run_main("train_cifar.py", *common, "--out", split) == 130
    assert load_checkpoint(os.path.join(split, "checkpoint.npz"))[1]["iteration"] == 2
    assert run_main("train_cifar.py", "--resume", split) == 0
    assert losses(log_records(split)) == losses(log_records(straight))
    assert_same_checkpoints(os.path.join(split, "checkpoint.npz"), os.path.join(straight, "checkpoint.npz"))


def test_the_label_stream_is_checkpointed(archive, tmp_path):
    """Resuming with G's label stream reset (as if it were not checkpointed) changes the run: the state matters."""
    common = ["--data", archive, "--conditional", *TINY, "--sample-every", "0"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert run_main("train_cifar.py", *common, "--iterations", "4", "--out", straight) == 0
    assert run_main("train_cifar.py", *common, "--iterations", "2", "--out", split) == 0
    path = os.path.join(split, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    assert meta["label_noise_state"] != np.random.default_rng([0, 7]).bit_generator.state  # it was drawn from
    shutil.copytree(split, str(tmp_path / "reset"))
    meta["label_noise_state"] = np.random.default_rng([0, 7]).bit_generator.state
    save_checkpoint(str(tmp_path / "reset" / "checkpoint.npz"), arrays, meta)
    for run in (split, str(tmp_path / "reset")):
        assert run_main("train_cifar.py", "--resume", run, "--iterations", "4") == 0
    assert losses(log_records(split)) == losses(log_records(straight))
    assert losses(log_records(str(tmp_path / "reset")))[2:] != losses(log_records(straight))[2:]


def test_a_checkpoint_without_the_label_stream_is_refused(cond_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(cond_run, run)
    arrays, meta = load_checkpoint(os.path.join(run, "checkpoint.npz"))
    del meta["label_noise_state"]
    save_checkpoint(os.path.join(run, "checkpoint.npz"), arrays, meta)
    capsys.readouterr()
    assert run_main("train_cifar.py", "--resume", run, "--iterations", "3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label_noise_state" in err


# --------------------------------------------------------------------------------------------- grids
def test_the_sample_grid_has_one_labelled_row_per_class(data, tmp_path):
    images, labels = data
    config = preset_config("cnn", iterations=1, num_classes=10, **TINY_CONFIG)
    trainer = Trainer(config, images, str(tmp_path / "run"), labels=labels)
    os.makedirs(trainer.out_dir)
    trainer.save_samples("grid")
    png = np.asarray(Image.open(os.path.join(trainer.out_dir, "grid.png")))
    tiles = make_grid(to_uint8(generate(trainer.G, trainer.z_fixed, labels=trainer.y_fixed)), nrow=GRID_COLUMNS)
    assert tiles.shape == (10 * 34 + 2, GRID_COLUMNS * 34 + 2, 3)
    margin = png.shape[1] - tiles.shape[1]
    assert png.shape[0] == tiles.shape[0] and 30 < margin < 120
    np.testing.assert_array_equal(png[:, margin:], tiles)  # row k: class k; column j: the same z_j in each row
    np.testing.assert_array_equal(np.asarray(trainer.y_fixed), np.repeat(np.arange(10), GRID_COLUMNS))
    z = np.asarray(trainer.z_fixed).reshape(10, GRID_COLUMNS, -1)
    assert (z == z[:1]).all() and not (z[0, 0] == z[0, 1]).all()
    for row in range(10):  # a name (white text) in the margin beside every row, and nothing between rows
        band = png[2 + row * 34: 2 + row * 34 + 32, :margin]
        assert (band > 128).any(), row
    assert not (png[:2, :margin] > 0).any()


def test_generate_cycles_the_classes_by_default(cond_run):
    _, G, _, _ = load_run(cond_run)
    z = np.random.default_rng(0).standard_normal((12, 128)).astype(np.float32)
    np.testing.assert_array_equal(generate(G, z), generate(G, z, labels=cycle_labels(12, 10)))
    np.testing.assert_allclose(generate(G, z, chunk=5, labels=np.full(12, 3, np.int32)),  # chunks keep labels
                               generate(G, z, labels=np.full(12, 3, np.int32)), rtol=1e-5, atol=1e-9)
    assert not np.array_equal(generate(G, z[:1], labels=np.array([3], np.int32)),
                              generate(G, z[:1], labels=np.array([4], np.int32)))


def test_generate_refuses_labels_for_an_unconditional_g(data, tmp_path):
    trainer = Trainer(preset_config("cnn", iterations=1, **TINY_CONFIG), data[0], str(tmp_path / "r"))
    with pytest.raises(ValueError, match="unconditional"):
        generate(trainer.G, trainer.z_fixed[:2], labels=np.zeros(2, np.int32))


# --------------------------------------------------------------------------------------------- sample.py
def test_sample_class_by_index_and_by_name(cond_run, tmp_path):
    by_index, by_name = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert run_main("sample.py", cond_run, "--class", "3", "--n", "5", "--out", by_index, "--seed", "1") == 0
    assert run_main("sample.py", cond_run, "--class", "Cat", "--n", "5", "--out", by_name, "--seed", "1") == 0
    a, b = np.load(by_index), np.load(by_name)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], np.full(5, 3))
    _, G, _, _ = load_run(cond_run)
    z = np.random.default_rng(1).standard_normal((5, 128)).astype(np.float32)
    np.testing.assert_array_equal(a["images"], np.transpose(to_uint8(generate(G, z, labels=np.full(5, 3, np.int32))),
                                                            (0, 3, 1, 2)))


def test_sample_without_class_cycles_and_records_the_labels(cond_run, tmp_path):
    out = str(tmp_path / "all.npz")
    assert run_main("sample.py", cond_run, "--n", "13", "--out", out) == 0
    np.testing.assert_array_equal(np.load(out)["labels"], np.arange(13) % 10)


def test_sample_grid_has_a_row_per_class(cond_run, tmp_path):
    out = str(tmp_path / "grid.png")
    assert run_main("sample.py", cond_run, "--grid", "--nrow", "4", "--out", out) == 0
    png = np.asarray(Image.open(out))
    assert png.shape[0] == 10 * 34 + 2 and png.shape[1] > 4 * 34 + 2 + 30


@pytest.mark.parametrize("argv, expected", [
    (["--class", "10"], "the run has 10 classes, 0..9 (airplane"),
    (["--class", "-1"], "the run has 10 classes, 0..9"),
    (["--class", "kitten"], "--class kitten: not a class of the run; give 0..9 or one of airplane"),
    (["--grid", "--class", "cat"], "either --grid or --class"),
    (["--grid", "--out", "{tmp}/g.npz"], "--grid writes a PNG"),
    (["--grid", "--n", "5"], "leave out --n"),
])
def test_sample_errors_on_a_conditional_run(cond_run, tmp_path, capsys, argv, expected):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "s.png")]
    capsys.readouterr()
    assert run_main("sample.py", cond_run, *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


def test_evaluation_during_a_conditional_run(archive, tmp_path):
    out = str(tmp_path / "run")
    assert run_main("train_cifar.py", "--data", archive, "--conditional", *TINY, "--iterations", "2",
                    "--sample-every", "0", "--eval-every", "2", "--eval-images", "20", "--out", out) == 0
    record = log_records(out)[-1]
    assert np.isfinite(record["swd_mean"]) and record["grad_norm_max"] > 0
    assert "embedding" in " ".join(row["layer"] for row in record["spectral"])
