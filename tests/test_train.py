"""Training end to end on a small synthetic CIFAR-like archive: files, exact resume, divergence, Ctrl-C, CLI errors."""
import json
import os

import numpy as np
import pytest

from fake_cifar import write_fake_cifar
from npsn import backend
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.rundir import log_records
from npsn.gan.trainer import Trainer, TrainingDiverged, preset_config
from script_runner import run_main

TINY = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


def run_script(*argv):
    """scripts/train_cifar.py's main, in-process (tests/script_runner.py); returns its exit status."""
    return run_main("train_cifar.py", *argv)


def losses(log):
    return [(r["iteration"], r["loss_d"], r["loss_g"], r["sigma"]) for r in log]


@pytest.mark.parametrize("model", ["cnn", "resnet"])
def test_a_few_iterations_write_every_file(archive, tmp_path, model):
    out = str(tmp_path / "run")
    code = run_script("--data", archive, "--model", model, "--iterations", "4", *TINY, "--out", out,
                      "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2", "--n-dis", "1")
    assert code == 0
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.npz", "config.json", "log.jsonl", "samples_000001.png",
                                       "samples_000002.png", "samples_000004.png", "samples_final.png"]
    log = log_records(out)
    assert [r["iteration"] for r in log] == [2, 4]
    for r in log:
        assert np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"])
        assert r["sigma"] and all(np.isfinite(s) and s > 0 for s in r["sigma"].values())
        assert r["images_per_s"] > 0
    arrays, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert meta["iteration"] == 4
    assert any(k.endswith("weight_u") for k in arrays) and any(k.endswith("running_var") for k in arrays)
    assert any(k.startswith("opt_d/state.") and k.endswith("exp_avg_sq") for k in arrays)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["model"] == model


def test_resume_reproduces_the_uninterrupted_losses(archive, tmp_path):
    common = ["--data", archive, *TINY, "--log-every", "1", "--checkpoint-every", "100", "--sample-every", "0",
              "--model", "resnet", "--n-dis", "2"]  # resnet: linear lr decay, n_dis > 1, BN in G, SN in D
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    assert run_script(*common, "--iterations", "6", "--out", straight) == 0
    # The split run stops at 3 of 6 iterations (as if interrupted), then resumes.
    config = preset_config("resnet", iterations=6, g_ch=16, d_ch=8, batch_size=8, n_dis=2, log_every=1,
                           checkpoint_every=100, sample_every=0)
    from npsn.data.cifar10 import load_cifar10
    images, _ = load_cifar10(archive)
    os.makedirs(split)
    with open(os.path.join(split, "config.json"), "w") as f:
        json.dump(config.__dict__, f)
    Trainer(config, images, split).run(until=3, progress=False)
    assert run_script("--data", archive, "--resume", split) == 0
    assert losses(log_records(split)) == losses(log_records(straight))


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(archive, tmp_path):
    from npsn.data.cifar10 import load_cifar10
    images, _ = load_cifar10(archive)
    config = preset_config("cnn", iterations=5, g_ch=16, d_ch=8, batch_size=8, log_every=1, checkpoint_every=100,
                           sample_every=0)
    reference = Trainer(config, images, str(tmp_path / "ref"))
    reference.run(progress=False)

    run_dir = str(tmp_path / "interrupted")
    trainer = Trainer(config, images, run_dir)
    original = trainer.train_iteration

    def interrupt_at_third():
        if trainer.iteration == 2:
            raise KeyboardInterrupt
        return original()

    trainer.train_iteration = interrupt_at_third
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=False)
    assert load_checkpoint(trainer.checkpoint_path)[1]["iteration"] == 2
    Trainer(config, images, run_dir, resume=True).run(progress=False)
    assert losses(log_records(run_dir)) == losses(log_records(reference.out_dir))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(archive, tmp_path):
    from npsn.data.cifar10 import load_cifar10
    images, _ = load_cifar10(archive)
    config = preset_config("cnn", iterations=10, g_ch=16, d_ch=8, batch_size=8, checkpoint_every=2, sample_every=0)
    trainer = Trainer(config, images, str(tmp_path / "run"))
    trainer.run(until=2, progress=False)
    before = load_checkpoint(trainer.checkpoint_path)
    next(iter(trainer.G.parameters())).data[...] = np.nan
    with pytest.raises(TrainingDiverged, match="iteration 3"):
        trainer.run(progress=False)
    after = load_checkpoint(trainer.checkpoint_path)
    assert after[1]["iteration"] == 2
    for key in before[0]:
        np.testing.assert_array_equal(before[0][key], after[0][key])


def test_bad_device_fails_before_loading_data(tmp_path, capsys):
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    code = run_script("--device", "gpu", "--data", str(tmp_path / "does-not-exist"), "--out", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "cupy" in err.lower() and "does-not-exist" not in err
    assert not os.path.exists(tmp_path / "r")


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    code = run_script("--data", str(tmp_path / "nothing-here.tar.gz"), "--out", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 2
    assert "nothing-here.tar.gz" in err and "Traceback" not in err


def test_gpu_training_smoke(archive, tmp_path, device):
    """The same few iterations on the chosen device give finite losses (the GPU run skips without CuPy/CUDA)."""
    out = str(tmp_path / "run")
    assert run_script("--data", archive, "--device", device, "--iterations", "2", *TINY, "--out", out,
                      "--log-every", "1", "--sample-every", "0") == 0
    assert all(np.isfinite(r["loss_d"]) for r in log_records(out))


def test_one_divergence_check_for_every_training_loop():
    from npsn.experiments import toy
    from npsn.gan import updates
    assert TrainingDiverged is updates.TrainingDiverged  # the trainer re-exports the one class
    assert updates.check_finite(np.float32(1.5), np.asarray(-2.0, np.float32), 7) == (1.5, -2.0)
    for bad in (np.nan, np.inf):
        with pytest.raises(TrainingDiverged, match="iteration 7: loss_d=1.0, loss_g="):
            updates.check_finite(np.asarray(1.0, np.float32), np.asarray(bad, np.float32), 7)
    config = toy.ToyConfig(iterations=2, batch_size=8, eval_samples=10)
    gan = toy.ToyGAN(config)
    next(iter(gan.G.parameters())).data[...] = np.nan
    with pytest.raises(TrainingDiverged, match="iteration 1"):
        updates.check_finite(*gan.train_iteration(), gan.iteration)
