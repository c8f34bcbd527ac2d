"""Every bad input and damaged run file is one line on stderr, exit status 2, and leaves the run as it was.

One table row per case (a new run's bad option, a resume that must be refused, a damaged file),
then the faults: a crash at each step of the checkpoint write, a full disk at a save, a second
signal during the final save, out of memory; and the documented behaviours (``--resume RUN``
alone, a torn last log line, stale temporary files, the umask, early grids and checkpoints).
Everything runs on the tiny fake CIFAR-10 of tests/fake_cifar.py.
"""
import errno
import json
import os
import shutil

import numpy as np
import pytest

from fake_cifar import write_fake_cifar
from npsn import backend
from npsn.gan import trainer as trainer_module
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.rundir import log_records
from npsn.gan.trainer import Trainer, preset_config
from script_runner import run_main

TINY = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--sample-every", "0", "--log-every", "1"]


def snapshot(root):
    """{relative path: (bytes, mode)} of every file under root, and every folder."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (f.read(), os.stat(path).st_mode)
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


@pytest.fixture(scope="module")
def good_run(archive, tmp_path_factory):
    """A finished 2-iteration run (checkpoint at 2), trained through the script: config.json records the data."""
    run = str(tmp_path_factory.mktemp("good") / "run")
    assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "2", "--out", run) == 0
    return run


@pytest.fixture(scope="module")
def conditional_run(archive, tmp_path_factory):
    """A finished 1-iteration class-conditional run."""
    run = str(tmp_path_factory.mktemp("conditional") / "run")
    assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "1", "--conditional", "--out", run) == 0
    return run


@pytest.fixture(scope="module")
def classifier_run(archive, tmp_path_factory):
    """A 1-epoch classifier of widths 4, 8, 8."""
    run = str(tmp_path_factory.mktemp("classifier") / "run")
    assert run_main("train_classifier.py", *[a.format(archive=archive, tmp="") for a in CLASSIFIER_NEW[:-1]], run) == 0
    return run


@pytest.fixture
def workspace(good_run, conditional_run, classifier_run, tmp_path):
    """tmp_path with copies of the good run as RUN, of the conditional run as COND and of the classifier as CLS,
    and a plain file FILE."""
    shutil.copytree(good_run, tmp_path / "RUN")
    shutil.copytree(conditional_run, tmp_path / "COND")
    shutil.copytree(classifier_run, tmp_path / "CLS")
    (tmp_path / "FILE").write_text("not a run\n")
    return tmp_path


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def overwrite(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def edit_config(run, **changes):
    path = os.path.join(run, "config.json")
    values = json.load(open(path))
    values.update(changes)
    json.dump(values, open(path, "w"))


def other_checkpoint(run, archive):
    """Replace RUN's checkpoint with a valid one of a different D width (config.json unchanged)."""
    config = preset_config("cnn", iterations=1, g_ch=16, d_ch=16, batch_size=8, sample_every=0)
    from npsn.data.cifar10 import load_cifar10
    other = Trainer(config, load_cifar10(archive)[0], os.path.join(run, "..", "other"))
    other.run(progress=False)
    shutil.copy(other.checkpoint_path, os.path.join(run, "checkpoint.npz"))
    shutil.rmtree(other.out_dir)


def rewrite_checkpoint(run, change):
    """Rewrite RUN's checkpoint with change(arrays) applied (the metadata kept)."""
    from npsn.gan.checkpoint import save_checkpoint
    path = os.path.join(run, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    change(arrays)
    save_checkpoint(path, arrays, meta)


def drop_one_array(arrays):
    del arrays[sorted(k for k in arrays if k.startswith("D/"))[0]]


def reshape_one_array(arrays):
    key = sorted(k for k in arrays if k.startswith("G/") and arrays[k].ndim == 4)[0]
    arrays[key] = arrays[key][:, :-1]


def remove_all_but_the_lock(run):
    """What a run leaves when it dies right after taking its folder: the lock file alone."""
    for name in os.listdir(run):
        if name != ".lock":
            os.remove(os.path.join(run, name))


def edit_classifier_widths(run, widths):
    """Rewrite the classifier checkpoint's recorded widths (its arrays unchanged)."""
    from npsn.gan.checkpoint import save_checkpoint
    path = os.path.join(run, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    meta["config"]["widths"] = widths
    save_checkpoint(path, arrays, meta)


def float64_weights(arrays):
    for k in [k for k in arrays if k.startswith("G/") and arrays[k].dtype == np.float32]:
        arrays[k] = arrays[k].astype(np.float64)


# (case, argv, damage(run, archive) or None, text the error line must contain)
NEW = ["--data", "{archive}", *TINY, "--iterations", "3", "--out", "{tmp}/NEW"]
RESUME = ["--resume", "{tmp}/RUN", "--iterations", "4"]
CASES = [
    ("batch size 0", NEW + ["--batch-size", "0"], None, "--batch-size: must be at least 1"),
    ("batch size above the data", NEW + ["--batch-size", "1000"], None, "more than the 100 training images"),
    ("batch size not a number", NEW + ["--batch-size", "abc"], None, "invalid int value"),
    ("negative lr", NEW + ["--lr", "-1"], None, "--lr: must be greater than 0"),
    ("nan lr", NEW + ["--lr", "nan"], None, "--lr: must be a finite float"),
    ("beta1 1", NEW + ["--beta1", "1"], None, "--beta1: must be in [0, 1)"),
    ("negative beta2", NEW + ["--beta2", "-0.1"], None, "--beta2: must be at least 0"),
    ("iterations 0", NEW + ["--iterations", "0"], None, "--iterations: must be at least 1"),
    ("iterations -5", NEW + ["--iterations", "-5"], None, "--iterations: must be at least 1"),
    ("log-every 0", NEW + ["--log-every", "0"], None, "--log-every: must be at least 1"),
    ("negative sample-every", NEW + ["--sample-every", "-1"], None, "--sample-every: must be at least 0"),
    ("negative checkpoint-every", NEW + ["--checkpoint-every", "-1"], None, "--checkpoint-every"),
    ("negative checkpoint-minutes", NEW + ["--checkpoint-minutes", "-1"], None, "--checkpoint-minutes"),
    ("negative eval-every", NEW + ["--eval-every", "-1"], None, "--eval-every"),
    ("eval-images 0", NEW + ["--eval-images", "0"], None, "--eval-images"),
    ("n-dis 0", NEW + ["--n-dis", "0"], None, "--n-dis: must be at least 1"),
    ("negative width", NEW + ["--d-ch", "-1"], None, "--d-ch"),
    ("negative seed", NEW + ["--seed", "-1"], None, "--seed"),
    ("unknown model", NEW + ["--model", "vgg"], None, "invalid choice"),
    # the paper's competing discriminators (issue 21)
    ("unknown d-norm", NEW + ["--d-norm", "gn"], None, "invalid choice"),
    ("unknown setting", NEW + ["--setting", "G"], None, "invalid choice"),
    ("unknown loss", NEW + ["--loss", "wgan"], None, "invalid choice"),
    ("negative weight-clip", NEW + ["--weight-clip", "-0.01"], None, "--weight-clip: must be at least 0"),
    ("nan weight-clip", NEW + ["--weight-clip", "nan"], None, "--weight-clip: must be a finite float"),
    ("weight-clip not a number", NEW + ["--weight-clip", "c"], None, "invalid float value"),
    ("gradient penalty with bn", NEW + ["--d-norm", "bn", "--loss", "wgan-gp"], None,
     "--loss: wgan-gp needs a discriminator without BatchNorm or LayerNorm"),
    ("gradient penalty with ln", NEW + ["--d-norm", "ln", "--loss", "gan-gp"], None, "--loss: gan-gp needs"),
    ("gradient penalty on resnet", NEW + ["--model", "resnet", "--loss", "wgan-gp"], None,
     "--loss: wgan-gp (a gradient penalty) is offered for unconditional --model cnn or sndcgan"),
    ("gradient penalty conditional", NEW + ["--conditional", "--loss", "gan-gp"], None, "is offered for unconditional"),
    ("d-norm on resnet", NEW + ["--model", "resnet", "--d-norm", "ln"], None,
     "--d-norm: ln is built for --model cnn or sndcgan, not resnet"),
    ("d-norm conditional", NEW + ["--conditional", "--d-norm", "wn"], None, "--d-norm: wn is offered for unconditional"),
    ("setting with a bad lr", NEW + ["--setting", "D", "--lr", "0"], None, "--lr: must be greater than 0"),
    ("unknown device", NEW + ["--device", "tpu"], None, "invalid choice"),
    ("--out an existing file", NEW + ["--out", "{tmp}/FILE"], None, "a file of that name exists"),
    ("--out an existing run", NEW + ["--out", "{tmp}/RUN"], None, "--resume"),
    ("--out with --resume", RESUME + ["--out", "{tmp}/NEW"], None, "give only --resume"),
    ("resume: other model", RESUME + ["--model", "resnet"], None, "model=cnn, which cannot change on resume"),
    ("resume: SN off", RESUME + ["--no-sn"], None, "--d-norm none: the run in"),
    ("resume: other batch size", RESUME + ["--batch-size", "16"], None, "batch_size=8"),
    ("resume: other width", RESUME + ["--d-ch", "16"], None, "d_ch=8"),
    ("resume: bad lr", RESUME + ["--lr", "-1"], None, "--lr: must be greater than 0"),
    ("resume: conditional", RESUME + ["--conditional"], None, "--conditional: the run"),
    ("resume: other d-norm", RESUME + ["--d-norm", "ortho"], None, "--d-norm ortho: the run in"),
    ("resume: other loss", RESUME + ["--loss", "wgan-gp"], None, "has loss=hinge, which cannot change"),
    ("resume: weight clipping", RESUME + ["--weight-clip", "0.01"], None, "has weight_clip=0.0, which cannot change"),
    ("resume: a setting", RESUME + ["--setting", "E"], None, "--setting E: the run in"),
    ("resume: already finished", ["--resume", "{tmp}/RUN"], None, "already at iteration 2 of 2"),
    ("resume: no such dir", ["--resume", "{tmp}/NOPE"], None, "no such run directory"),
    ("resume: not a run", ["--resume", "{tmp}"], None, "no config.json there"),
    ("truncated checkpoint", RESUME, lambda run, a: truncate(os.path.join(run, "checkpoint.npz")),
     "checkpoint.npz is damaged"),
    ("random-bytes checkpoint", RESUME,
     lambda run, a: overwrite(os.path.join(run, "checkpoint.npz"), np.random.default_rng(0).bytes(5000)),
     "checkpoint.npz is damaged"),
    ("checkpoint of another model", RESUME, lambda run, a: other_checkpoint(run, a), "d_ch=8"),
    ("checkpoint missing an array", RESUME, lambda run, a: rewrite_checkpoint(run, drop_one_array),
     "does not fit the run's config.json (KeyError"),
    ("checkpoint of float64 weights", RESUME, lambda run, a: rewrite_checkpoint(run, float64_weights),
     "has dtype float64, expected float32"),
    ("corrupt config.json", RESUME, lambda run, a: overwrite(os.path.join(run, "config.json"), b'{"model": "cn'),
     "config.json is damaged"),
    ("config.json not an object", RESUME, lambda run, a: overwrite(os.path.join(run, "config.json"), b"[1, 2]"),
     "not a JSON object"),
    ("config.json bad value", RESUME, lambda run, a: edit_config(run, lr="fast"), "lr must be a finite float"),
    ("config.json unknown key", RESUME, lambda run, a: edit_config(run, colour="red"), "unknown settings colour"),
    ("config.json one class", RESUME, lambda run, a: edit_config(run, num_classes=1), "num_classes must be 0"),
    ("config.json unknown d_norm", RESUME, lambda run, a: edit_config(run, d_norm="gn"), "d_norm must be one of"),
    ("config.json penalty with bn", RESUME, lambda run, a: edit_config(run, d_norm="bn", loss="wgan-gp"),
     "loss wgan-gp needs a discriminator without BatchNorm"),
    ("config.json differs from checkpoint in d_norm", RESUME, lambda run, a: edit_config(run, d_norm="wn"),
     "trained with d_norm='sn'"),
    ("config.json differs from checkpoint", RESUME, lambda run, a: edit_config(run, z_dim=64),
     "trained with z_dim=128"),
    ("damaged log line", RESUME, lambda run, a: overwrite(os.path.join(run, "log.jsonl"), b"garbage\n", "ab") or
     overwrite(os.path.join(run, "log.jsonl"), b'{"iteration": 3}\n', "ab"), "line 3 is damaged"),
    ("data moved", RESUME, lambda run, a: edit_config(run, data="/nonexistent/cifar-10-python.tar.gz"),
     "give --data PATH"),
    ("config.json data a number", RESUME, lambda run, a: edit_config(run, data=5), "data=5, which is not text"),
    ("config.json source a list", RESUME, lambda run, a: edit_config(run, source=[1]), "source=[1], which is not text"),
    ("resume: the run wrote nothing", RESUME, lambda run, a: remove_all_but_the_lock(run), "start it again with --out"),
    ("resume without checkpoint: other width", RESUME + ["--d-ch", "16"],
     lambda run, a: os.remove(os.path.join(run, "checkpoint.npz")), "d_ch=8"),
    ("resume without checkpoint: bad config.json", RESUME,
     lambda run, a: os.remove(os.path.join(run, "checkpoint.npz")) or edit_config(run, lr="fast"),
     "lr must be a finite float"),
    ("--no-sn with --sn-mode", NEW + ["--no-sn", "--sn-mode", "operator"], None, "--no-sn turns that off"),
    ("eval-images above the data", NEW + ["--eval-every", "2", "--eval-images", "60000"], None,
     "60000 is more than the 100 training images SWD compares with; give at most 100"),
    ("no data location", RESUME, lambda run, a: edit_config(run, data=None), "give --data PATH"),
    ("missing data", NEW + ["--data", "{tmp}/missing.tar.gz"], None, "missing.tar.gz"),
]


@pytest.mark.parametrize("case, argv, damage, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, argv, damage, expected, workspace, archive, capsys):
    if damage:
        damage(str(workspace / "RUN"), archive)
    before = snapshot(workspace)
    argv = [a.format(tmp=workspace, archive=archive) for a in argv]
    capsys.readouterr()
    code = run_main("train_cifar.py", *argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and expected in err, err
    assert snapshot(workspace) == before  # RUN byte for byte, and NEW never created


# An unusable GPU (the strict CuPy stand-in made to fail like a machine without NVRTC, cuBLAS or
# a driver): every script says what is missing in one line, exit 2, before it writes anything.
GPU_CASES = [
    ("train_cifar.py", ["--data", "{archive}", *TINY, "--iterations", "3", "--out", "{tmp}/NEW", "--device", "gpu"]),
    ("train_cifar.py", ["--resume", "{tmp}/RUN", "--iterations", "4", "--device", "gpu"]),
    ("sample.py", ["{tmp}/RUN", "--n", "4", "--out", "{tmp}/NEW.png", "--device", "gpu"]),
    ("evaluate.py", ["{tmp}/RUN", "--data", "{archive}", "--n", "4", "--device", "gpu"]),
    ("toy_2d.py", ["--dataset", "ring", "--seeds", "1", "--iterations", "2", "--out", "{tmp}/NEW", "--device", "gpu"]),
    ("bench.py", ["--device", "gpu", "--models", "cnn", "--repeats", "1", "--warmup", "0", "--memory", "off"]),
]


@pytest.mark.parametrize("part, words", [("nvrtc", "NVRTC"), ("cublas", "cuBLAS"), ("driver", "NVIDIA driver")])
@pytest.mark.parametrize("script, argv", GPU_CASES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(GPU_CASES)])
def test_an_unusable_gpu_is_one_line_and_changes_nothing(script, argv, part, words, workspace, archive, capsys,
                                                         strict_gpu, monkeypatch):
    monkeypatch.setattr(backend, "_CHECKED", set())  # the device check runs again
    before = snapshot(workspace)
    argv = [a.format(tmp=workspace, archive=archive) for a in argv]
    capsys.readouterr()
    with strict_gpu.broken(part):
        assert run_main(script, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: device 'gpu'") and words in err[0], err
    assert "cupy-cuda12x" in err[0] and "Traceback" not in err[0]
    assert snapshot(workspace) == before


def test_resume_alone_continues_with_the_recorded_data(workspace, capsys):
    run = str(workspace / "RUN")
    assert json.load(open(os.path.join(run, "config.json")))["data"].startswith("/")
    assert run_main("train_cifar.py", "--resume", run, "--iterations", "4") == 0
    assert [r["iteration"] for r in log_records(run)] == [1, 2, 3, 4]
    assert json.load(open(os.path.join(run, "config.json")))["iterations"] == 4


def test_torn_last_log_line_is_dropped_with_a_notice(workspace, capsys):
    run = str(workspace / "RUN")
    overwrite(os.path.join(run, "log.jsonl"), b'{"iteration": 3, "loss_d": 0.5', "ab")
    assert [r["iteration"] for r in log_records(run)] == [1, 2]
    run_main("plot_run.py", run, "--out", str(workspace / "plots"))  # 2 without matplotlib: the log is read first
    assert "left out a torn last line" in capsys.readouterr().err
    assert run_main("train_cifar.py", "--resume", run, "--iterations", "3") == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [r["iteration"] for r in log_records(run)] == [1, 2, 3]


def test_stale_temporary_checkpoints_are_removed_at_the_next_start(workspace, capsys):
    run = str(workspace / "RUN")
    stale = os.path.join(run, ".checkpoint-12345-0.tmp")
    overwrite(stale, b"half a checkpoint")  # what kill -9 during a save leaves
    assert run_main("train_cifar.py", "--resume", run, "--iterations", "3") == 0
    assert not os.path.exists(stale) and "removed" in capsys.readouterr().err


def test_checkpoint_follows_the_umask(archive, tmp_path):
    old = os.umask(0o027)
    try:
        out = str(tmp_path / "run")
        assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "1", "--out", out) == 0
    finally:
        os.umask(old)
    modes = {name: os.stat(os.path.join(out, name)).st_mode & 0o777 for name in os.listdir(out)}
    assert modes["checkpoint.npz"] == modes["log.jsonl"] == 0o640, modes


def test_a_first_grid_at_iteration_1_and_time_based_checkpoints(archive, tmp_path, monkeypatch):
    saved = []
    real_save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda path, arrays, meta: (saved.append(meta["iteration"]), real_save(path, arrays, meta)))
    out = str(tmp_path / "run")
    assert run_main("train_cifar.py", "--data", archive, *TINY[:-4], "--iterations", "3", "--out", out,
                    "--sample-every", "100", "--checkpoint-every", "0", "--checkpoint-minutes", "1e-9") == 0
    assert saved == [1, 2, 3, 3]  # each iteration (the time has always passed), then the final one
    assert "samples_000001.png" in os.listdir(out)


# --- faults ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", ["savez", "fsync", "replace", "interrupt in savez"])
def test_a_crash_at_each_step_of_the_checkpoint_write_keeps_the_last_one(step, archive, tmp_path, monkeypatch):
    from npsn.data.cifar10 import load_cifar10
    config = preset_config("cnn", iterations=4, g_ch=16, d_ch=8, batch_size=8, sample_every=0, checkpoint_every=2)
    trainer = Trainer(config, load_cifar10(archive)[0], str(tmp_path / "run"))
    trainer.run(until=2, progress=False)
    before = open(trainer.checkpoint_path, "rb").read()
    error = KeyboardInterrupt if step.startswith("interrupt") else OSError(errno.EIO, "simulated crash")

    def fail(*args, **kwargs):
        raise error

    import npsn.gan.checkpoint as checkpoint_module
    target = {"savez": (checkpoint_module.np, "savez"), "interrupt in savez": (checkpoint_module.np, "savez"),
              "fsync": (checkpoint_module.os, "fsync"), "replace": (checkpoint_module.os, "replace")}[step]
    monkeypatch.setattr(*target, fail)
    with pytest.raises((OSError, KeyboardInterrupt)):
        trainer.run(progress=False)
    monkeypatch.undo()
    assert open(trainer.checkpoint_path, "rb").read() == before
    assert trainer.saved_iteration == 2
    assert not [n for n in os.listdir(trainer.out_dir) if n.endswith(".tmp")]
    assert load_checkpoint(trainer.checkpoint_path)[1]["iteration"] == 2


def fail_save_at(monkeypatch, iteration, error):
    real_save = trainer_module.save_checkpoint

    def save(path, arrays, meta):
        if meta["iteration"] == iteration:
            raise error
        return real_save(path, arrays, meta)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)


def test_a_full_disk_at_a_save_stops_with_the_last_good_checkpoint(archive, tmp_path, monkeypatch, capsys):
    fail_save_at(monkeypatch, 4, OSError(errno.ENOSPC, "No space left on device", "checkpoint.npz"))
    out = str(tmp_path / "run")
    code = run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "6", "--checkpoint-every", "2",
                    "--out", out)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert "No space left on device" in err and "iteration 2" in err and "--resume" in err, err
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["iteration"] == 2


@pytest.mark.parametrize("fault", ["full disk", "second signal"])
def test_a_fault_before_the_first_checkpoint_advises_what_works(fault, archive, tmp_path, monkeypatch, capsys):
    """No checkpoint on disk: the advice is --resume, which then starts the run again from iteration 0."""
    if fault == "full disk":
        fail_save_at(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device", "checkpoint.npz"))
        expected_code = 1
    else:
        fail_save_at(monkeypatch, 1, KeyboardInterrupt())
        interrupt_at_iteration(monkeypatch, 1)
        expected_code = 130
    out = str(tmp_path / "run")
    code = run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "6", "--checkpoint-every", "2",
                    "--out", out)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == expected_code and "no checkpoint has been written yet" in err, err
    assert f"no checkpoint yet, so python scripts/train_cifar.py --resume {out} starts it again" in err, err
    monkeypatch.undo()
    assert run_main("train_cifar.py", "--resume", out, "--iterations", "3") == 0
    assert [json.loads(line)["iteration"] for line in open(os.path.join(out, "log.jsonl"))] == [1, 2, 3]


def interrupt_at_iteration(monkeypatch, iteration):
    """Make Trainer.train_iteration raise KeyboardInterrupt (a Ctrl-C) once ``iteration`` updates are done."""
    real_iteration = Trainer.train_iteration

    def interrupted(self):
        if self.iteration == iteration:
            raise KeyboardInterrupt
        return real_iteration(self)

    monkeypatch.setattr(Trainer, "train_iteration", interrupted)


def test_a_second_signal_during_the_final_save_claims_no_checkpoint(archive, tmp_path, monkeypatch, capsys):
    fail_save_at(monkeypatch, 3, KeyboardInterrupt())  # the save after the first Ctrl-C is interrupted too
    interrupt_at_iteration(monkeypatch, 3)
    out = str(tmp_path / "run")
    code = run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "6", "--checkpoint-every", "2",
                    "--out", out)
    err = capsys.readouterr().err
    assert code == 130
    assert "checkpoint written" not in err and "(iteration 2)" in err, err
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["iteration"] == 2


def test_an_interrupt_writes_a_checkpoint_and_a_grid(archive, tmp_path, monkeypatch, capsys):
    interrupt_at_iteration(monkeypatch, 3)
    out = str(tmp_path / "run")
    assert run_main("train_cifar.py", "--data", archive, *TINY[:-4], "--iterations", "6", "--out", out) == 130
    assert "checkpoint written" in capsys.readouterr().err
    assert "samples_000003.png" in os.listdir(out)
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["iteration"] == 3


def test_out_of_memory_is_one_line_with_the_batch_size(archive, tmp_path, monkeypatch, capsys):
    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(Trainer, "train_iteration", no_memory)
    code = run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "2", "--out", str(tmp_path / "r"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "out of memory with --batch-size 8" in err and "Traceback" not in err


# --- sample.py and evaluate.py -----------------------------------------------------------------------------

def test_sample_creates_missing_folders(good_run, tmp_path):
    out = str(tmp_path / "a" / "b" / "grid.png")
    assert run_main("sample.py", good_run, "--n", "4", "--out", out) == 0
    assert os.path.isfile(out)


@pytest.mark.parametrize("option", [["--class", "3"], ["--class", "cat"], ["--grid"]])
def test_class_options_on_an_unconditional_run_are_one_line(good_run, tmp_path, capsys, option):
    assert run_main("sample.py", good_run, *option, "--out", str(tmp_path / "s.png")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is unconditional" in err and not os.listdir(tmp_path), err


def test_evaluate_checks_n_and_out_before_computing(good_run, archive, tmp_path, capsys):
    assert run_main("evaluate.py", good_run, "--data", archive, "--n", "21") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the 20 images of the test split" in err
    assert run_main("evaluate.py", good_run, "--data", archive, "--n", "4", "--out", str(tmp_path / "x" / "e.json")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert not os.path.exists(os.path.join(good_run, "eval.json"))


# --- train_classifier.py, and evaluate.py's --classifier ------------------------------------------------------------

CLASSIFIER_NEW = ["--data", "{archive}", "--widths", "4,8,8", "--batch-size", "8", "--epochs", "1", "--no-progress",
                  "--out", "{tmp}/NEW"]
EVALUATE = ["{tmp}/RUN", "--data", "{archive}", "--n", "4"]
# (case, script, argv, text the error line must contain)
CLASSIFIER_CASES = [
    ("epochs 0", "train_classifier.py", CLASSIFIER_NEW + ["--epochs", "0"], "--epochs must be at least 1"),
    ("widths not numbers", "train_classifier.py", CLASSIFIER_NEW + ["--widths", "4,x,8"], "three comma-separated"),
    ("two widths", "train_classifier.py", CLASSIFIER_NEW + ["--widths", "4,8"], "--widths needs three"),
    ("lr 0", "train_classifier.py", CLASSIFIER_NEW + ["--lr", "0"], "--lr must be positive"),
    ("warmup 1", "train_classifier.py", CLASSIFIER_NEW + ["--warmup", "1"], "--warmup must be in [0, 1)"),
    ("batch above the data", "train_classifier.py", CLASSIFIER_NEW + ["--batch-size", "1000"],
     "more than the 100 training images"),
    ("--out an existing run", "train_classifier.py", CLASSIFIER_NEW + ["--out", "{tmp}/RUN"], "--resume"),
    ("--out and --resume", "train_classifier.py", ["--resume", "{tmp}/RUN", "--out", "{tmp}/NEW"], "exclude each other"),
    ("resume with a setting", "train_classifier.py", ["--resume", "{tmp}/RUN", "--epochs", "3"], "drop --epochs"),
    ("resume a GAN run", "train_classifier.py", ["--resume", "{tmp}/RUN"], "not a classifier checkpoint"),
    ("resume no such dir", "train_classifier.py", ["--resume", "{tmp}/NOPE"], "no such run directory"),
    ("missing data", "train_classifier.py", CLASSIFIER_NEW + ["--data", "{tmp}/missing.tar.gz"], "missing.tar.gz"),
    ("evaluate: no classifier there", "evaluate.py", EVALUATE + ["--classifier", "{tmp}/NOPE"], "train_classifier.py"),
    ("evaluate: a GAN run as classifier", "evaluate.py", EVALUATE + ["--classifier", "{tmp}/RUN"],
     "not an npsn classifier checkpoint"),
    ("evaluate: a damaged classifier", "evaluate.py", EVALUATE + ["--classifier", "{tmp}/FILE"], "cannot read the classifier"),
    ("evaluate: a classifier of width 4.5", "evaluate.py", EVALUATE + ["--classifier", "{tmp}/CLS-4.5"],
     "its configuration is damaged (widths [4.5, 8, 8]"),
    ("evaluate: a classifier of width '8'", "evaluate.py", EVALUATE + ["--classifier", "{tmp}/CLS-'8'"],
     "its configuration is damaged (widths [4, '8', 8]"),
    ("resume a classifier of width 4.5", "train_classifier.py", ["--resume", "{tmp}/CLS-json-4.5"],
     "--widths needs three positive channel counts"),
    ("classifier config.json data a number", "train_classifier.py", ["--resume", "{tmp}/CLS-data"],
     "data must be the path of the training data, got 5"),
    ("sample: --class ²", "sample.py", ["{tmp}/COND", "--class", "²", "--out", "{tmp}/NEW.png"],
     "--class ²: not a class of the run"),
    ("sample: --class 10", "sample.py", ["{tmp}/COND", "--class", "10", "--out", "{tmp}/NEW.png"],
     "the run has 10 classes, 0..9"),
    ("sample: a wrong-shaped array", "sample.py", ["{tmp}/RUN-reshaped", "--out", "{tmp}/NEW.png"],
     "its arrays do not fit its configuration (ValueError"),
    ("sample: a missing array", "sample.py", ["{tmp}/RUN-dropped", "--out", "{tmp}/NEW.png"],
     "its arrays do not fit its configuration (KeyError"),
    ("sample: too many images for a grid", "sample.py", ["{tmp}/RUN", "--n", "5000000", "--out", "{tmp}/NEW.png"],
     "a .png grid holds at most 10,000 images"),
    ("sample: too many rows for a grid", "sample.py", ["{tmp}/COND", "--grid", "--nrow", "1001", "--out", "{tmp}/NEW.png"],
     "give --nrow 1000 or less"),
    ("plot_run: plots is a file", "plot_run.py", ["{tmp}/RUN-plots-file"], "a file of that name exists"),
    ("plot_run: --out a file", "plot_run.py", ["{tmp}/RUN", "--out", "{tmp}/FILE"], "--out"),
]

# Damaged copies the cases above use, made in their workspace.
VARIANTS = {
    "CLS-4.5": ("CLS", lambda run: edit_classifier_widths(run, [4.5, 8, 8])),
    "CLS-'8'": ("CLS", lambda run: edit_classifier_widths(run, [4, "8", 8])),
    "CLS-json-4.5": ("CLS", lambda run: edit_config(run, widths=[4.5, 8, 8])),
    "CLS-data": ("CLS", lambda run: edit_config(run, data=5)),
    "RUN-reshaped": ("RUN", lambda run: rewrite_checkpoint(run, reshape_one_array)),
    "RUN-dropped": ("RUN", lambda run: rewrite_checkpoint(run, drop_one_array)),
    "RUN-plots-file": ("RUN", lambda run: overwrite(os.path.join(run, "plots"), b"not a folder")),
}


@pytest.mark.parametrize("case, script, argv, expected", CLASSIFIER_CASES, ids=[c[0] for c in CLASSIFIER_CASES])
def test_classifier_bad_input_is_one_line_and_changes_nothing(case, script, argv, expected, workspace, archive, capsys):
    for name, (source, damage) in VARIANTS.items():
        if any(f"{{tmp}}/{name}" in a for a in argv):
            shutil.copytree(workspace / source, workspace / name)
            damage(str(workspace / name))
    before = snapshot(workspace)
    argv = [a.format(tmp=workspace, archive=archive) for a in argv]
    capsys.readouterr()
    code = run_main(script, *argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and expected in err, err
    assert snapshot(workspace) == before  # RUN byte for byte, and NEW never created


# --- NPSN_NUM_THREADS: checked by every script before it reads or writes anything ---------------------------

THREAD_CASES = [
    ("train_cifar.py", NEW),
    ("train_cifar.py", RESUME),
    ("train_classifier.py", CLASSIFIER_NEW),
    ("sample.py", ["{tmp}/RUN", "--n", "4", "--out", "{tmp}/NEW.png"]),
    ("evaluate.py", EVALUATE),
    ("toy_2d.py", ["--dataset", "ring", "--seeds", "1", "--iterations", "2", "--out", "{tmp}/NEW"]),
    ("bench.py", ["--models", "cnn", "--g-ch", "8", "--d-ch", "8", "--memory", "off"]),
]


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", "²"])
@pytest.mark.parametrize("script, argv", THREAD_CASES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(THREAD_CASES)])
def test_a_bad_thread_count_is_one_line_and_changes_nothing(script, argv, value, workspace, archive, capsys,
                                                           monkeypatch):
    monkeypatch.setenv("NPSN_NUM_THREADS", value)
    before = snapshot(workspace)
    argv = [a.format(tmp=workspace, archive=archive) for a in argv]
    capsys.readouterr()
    assert run_main(script, *argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: NPSN_NUM_THREADS={value}: give a whole number of host threads, at least 1 (or leave it " \
                  f"unset: one per CPU)\n", err
    assert snapshot(workspace) == before


# --- documented behaviours of the other scripts -----------------------------------------------------------------

def test_download_without_a_network_leaves_no_folder_and_names_data_path(archive, tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.chdir(tmp_path)
    code = run_main("train_cifar.py", "--download", *TINY, "--iterations", "1", "--out", "run")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Temporary failure" in err and "--data PATH" in err, err
    assert os.listdir(tmp_path) == []  # neither ./data nor the run


def test_plot_run_writes_where_out_says(good_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "a" / "plots")
    assert run_main("plot_run.py", good_run, "--out", out) == 0
    assert "losses.png" in os.listdir(out) and not os.path.exists(os.path.join(good_run, "plots"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_plot_run_on_a_read_only_run_is_one_line(workspace, capsys):
    run = workspace / "RUN"
    os.chmod(run, 0o555)
    try:
        assert run_main("plot_run.py", str(run)) == 2
    finally:
        os.chmod(run, 0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a writable folder" in err and "--out DIR" in err, err


def test_evaluate_shows_each_step(good_run, archive, tmp_path, capsys):
    assert run_main("evaluate.py", good_run, "--data", archive, "--n", "8", "--out", str(tmp_path / "e.json")) == 0
    err = capsys.readouterr().err
    assert "evaluate: generating 8 images" in err and "evaluate: SWD of 8 generated vs 8 real images" in err, err


def test_the_header_says_which_of_the_presets_model_and_loss_were_replaced(archive, tmp_path, capsys):
    assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "1", "--loss", "wasserstein",
                    "--out", str(tmp_path / "run")) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("preset ")][0]
    assert line.startswith("preset cnn: ") and line.endswith("(this run replaces the preset's loss hinge with "
                                                             "wasserstein)"), line
