"""The run API (npsn.gan.run) called as a library: a run's life without the training script.

Resume rules, the one-writer lock, a run started again without a checkpoint, unique default names, the
order "check everything, then write", an injected evaluator, and the messages of a stopped run. The
command line's one-line errors for the same cases are tests/test_cli_errors.py's.
"""
import json
import os
import re
import shutil
import time

import pytest

from fake_cifar import write_fake_cifar
from npsn.gan import run as run_module
from npsn.gan import trainer as trainer_module
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.run import Run, RunError, RunFailed, RunInterrupted, new_run_config
from npsn.gan.rundir import log_records
from npsn.gan.trainer import Trainer, TrainingDiverged
from test_cli_errors import edit_config, snapshot

TINY = dict(g_ch=16, d_ch=8, batch_size=8, sample_every=0, log_every=1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


@pytest.fixture(scope="module")
def finished(archive, tmp_path_factory):
    """A finished 2-iteration run (its checkpoint at 2), trained through the library."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    with Run.create(dict(TINY, iterations=2), out=out, data=archive) as run:
        run.train()
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    """A copy of the finished run, to change."""
    shutil.copytree(finished, tmp_path / "run")
    return str(tmp_path / "run")


def iterations(run_dir):
    return [record["iteration"] for record in log_records(run_dir)]


def test_a_run_records_its_settings_and_data_and_resumes_for_longer(finished, run_dir, archive):
    recorded = json.load(open(os.path.join(finished, "config.json")))
    assert recorded["data"] == os.path.abspath(archive) and recorded["preset"] == "cnn" and recorded["source"]
    assert iterations(finished) == [1, 2]
    with Run.resume(run_dir, {"iterations": 3, "lr": 1e-4}) as run:  # data: where config.json says
        assert run.from_checkpoint and run.trainer.iteration == 2 and run.config.lr == 1e-4
        assert run.describe()[-1] == "resuming from iteration 2 of 3"
        run.train()
    assert iterations(run_dir) == [1, 2, 3]
    assert json.load(open(os.path.join(run_dir, "config.json")))["iterations"] == 3


@pytest.mark.parametrize("settings, damage, expected", [
    ({"batch_size": 16}, None, "batch_size=8, which cannot change on resume"),
    ({"d_norm": "none"}, None, "--d-norm none: the run"),
    ({"iterations": 3, "lr": -1.0}, None, "argument --lr: must be greater than 0"),
    ({}, None, "already at iteration 2 of 2"),
    ({"iterations": 3}, dict(colour="red"), "unknown settings colour"),
    ({"iterations": 3}, dict(lr="fast"), "lr must be a finite float"),
    ({"iterations": 3}, dict(z_dim=64), "but the checkpoint was trained with z_dim=128"),
    ({"iterations": 3}, dict(data=5), "data=5, which is not text"),
])
def test_resume_refuses_what_the_recorded_run_does_not_allow(run_dir, settings, damage, expected):
    if damage:
        edit_config(run_dir, **damage)
    before = snapshot(run_dir)
    with pytest.raises(RunError, match=expected):
        Run.resume(run_dir, settings)
    assert snapshot(run_dir) == before


def test_a_run_without_a_checkpoint_starts_again_from_iteration_0(run_dir):
    os.remove(os.path.join(run_dir, "checkpoint.npz"))  # as a run killed before its first checkpoint leaves it
    with Run.resume(run_dir, {"batch_size": 8}) as run:  # a setting equal to the run's may be given
        assert not run.from_checkpoint and run.trainer.iteration == 0
        assert run.describe()[-1].startswith(f"no checkpoint in {run_dir} (the run stopped before its first one)")
        run.train()
    assert iterations(run_dir) == [1, 2]  # the earlier attempt's lines are gone, none is twice
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.npz"))[1]["iteration"] == 2


def test_an_open_run_holds_its_directory_until_it_is_closed(run_dir, archive):
    busy = f"another process (pid {os.getpid()}) is training this run"
    with Run.resume(run_dir, {"iterations": 3}):
        with pytest.raises(RunError, match=re.escape(f"--resume {run_dir}: {busy}")):
            Run.resume(run_dir, {"iterations": 3})
        with pytest.raises(RunError, match=re.escape(f"--out {run_dir}: {busy}")):
            Run.create(TINY, out=run_dir, data=archive)
    Run.resume(run_dir, {"iterations": 3}).close()  # closed: the directory is free again


def test_new_runs_started_in_the_same_second_get_their_own_folders(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *args: "20260101-120000")
    folders = []
    for _ in range(2):
        with Run.create(dict(TINY, preset="resnet", model="cnn"), data=archive) as run:
            folders.append(run.out_dir)
    assert folders == ["runs/resnet-20260101-120000", "runs/resnet-20260101-120000-2"]
    assert json.load(open(os.path.join(folders[1], "config.json")))["preset"] == "resnet"


@pytest.mark.parametrize("settings, data, expected", [
    (dict(TINY, batch_size=1000), None, "more than the 100 training images"),
    (dict(TINY, d_norm="none", sn_mode="operator"), None, "--no-sn turns that off"),
    (dict(TINY, d_norm="ln", sn_mode="operator"), None, "--d-norm ln turns that off"),
    (TINY, "missing.tar.gz", "missing.tar.gz"),
])
def test_a_new_run_is_checked_before_anything_is_written(settings, data, expected, archive, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RunError, match=expected):
        Run.create(settings, out=str(out), data=str(tmp_path / data) if data else archive)
    assert not out.exists()


def test_an_interrupt_while_opening_leaves_nothing(archive, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "load_cifar10", interrupted)  # Ctrl-C while the data loads
    with pytest.raises(RunInterrupted, match="^interrupted before training started; nothing was written$"):
        Run.create(TINY, out=str(tmp_path / "new"), data=archive)
    assert not (tmp_path / "new").exists()


def test_a_closed_run_does_not_train(run_dir):
    run = Run.resume(run_dir, {"iterations": 3})
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        run.train()


def test_settings_are_named_as_in_the_config():
    with pytest.raises(ValueError, match="unknown settings colour"):
        new_run_config({"colour": "red"})
    config, out = new_run_config({"model": "resnet", "iterations": None})  # None: the preset's value
    assert config.preset == "resnet" and config.iterations == 50_000 and out.startswith("runs/resnet-")


def test_an_injected_evaluator_writes_its_values_into_the_log(archive, tmp_path):
    def make_evaluator(config, images, labels):
        assert len(images) == 100 and labels is not None
        return lambda trainer: {"probe": float(trainer.iteration)}

    out = str(tmp_path / "run")
    with Run.create(dict(TINY, iterations=2, eval_every=2, eval_images=10), out=out, data=archive,
                    make_evaluator=make_evaluator) as run:
        run.train()
    assert [r.get("probe") for r in log_records(out)] == [None, 2.0]


def stop_at(monkeypatch, iteration, error):
    """Make Trainer.train_iteration raise ``error`` once ``iteration`` updates are done."""
    real_iteration = Trainer.train_iteration

    def stopped(self):
        if self.iteration == iteration:
            raise error
        return real_iteration(self)

    monkeypatch.setattr(Trainer, "train_iteration", stopped)


def test_an_interrupt_is_a_run_interrupted_that_says_how_to_continue(archive, tmp_path, monkeypatch):
    stop_at(monkeypatch, 1, KeyboardInterrupt())
    out = str(tmp_path / "run")
    with Run.create(dict(TINY, iterations=4), out=out, data=archive, command="python my_train.py") as run:
        with pytest.raises(RunInterrupted) as stopped:
            run.train()
    assert str(stopped.value) == f"interrupted at iteration 1; checkpoint written. Continue with: " \
                                 f"python my_train.py --resume {out}"
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["iteration"] == 1


def test_a_divergence_is_a_run_failed_seen_by_every_rank(archive, tmp_path, monkeypatch):
    stop_at(monkeypatch, 1, TrainingDiverged("non-finite loss at iteration 2"))
    with Run.create(dict(TINY, iterations=4), out=str(tmp_path / "run"), data=archive) as run:
        with pytest.raises(RunFailed) as failed:
            run.train()
    assert not failed.value.local
    assert str(failed.value) == "training stopped: non-finite loss at iteration 2. No checkpoint has been written yet"


def test_a_failed_write_is_a_run_failed_of_this_process_naming_the_last_good_checkpoint(archive, tmp_path,
                                                                                      monkeypatch):
    real_save = trainer_module.save_checkpoint

    def save(path, arrays, meta):
        if meta["iteration"] == 4:
            raise OSError(28, "No space left on device", path)
        return real_save(path, arrays, meta)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)
    out = str(tmp_path / "run")
    with Run.create(dict(TINY, iterations=6, checkpoint_every=2), out=out, data=archive) as run:
        with pytest.raises(RunFailed) as failed:
            run.train()
    assert failed.value.local
    assert str(failed.value).startswith("a write failed at iteration 4 (No space left on device: ")
    assert f"the last good checkpoint is {out}/checkpoint.npz (iteration 2)" in str(failed.value)
    assert str(failed.value).endswith(f"continue with: python scripts/train_cifar.py --resume {out}")
