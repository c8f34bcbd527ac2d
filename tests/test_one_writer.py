"""A run stays one run, tried with real processes: one writer per run directory, unique default names, a way
forward from a run killed before its first checkpoint, and a closed stdout that does not stop training.

A training subprocess runs on the tiny fake CIFAR-10 of tests/fake_cifar.py with checkpoints off (only at the
end), so that it holds its run directory, and no checkpoint, for as long as the test needs. The tests wait
for files (never a fixed sleep), with generous timeouts, and stop the subprocess (SIGSTOP) while they look
at its folder, so that nothing moves in it.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fake_cifar import write_fake_cifar
from npsn.gan.rundir import log_records
from script_runner import SCRIPTS, run_main
from test_cli_errors import TINY, snapshot

ROOT = os.path.dirname(SCRIPTS)
TIMEOUT = 120  # seconds for a subprocess to reach a state, or to finish
NO_CHECKPOINT = ["--checkpoint-every", "0", "--checkpoint-minutes", "0"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


def environment():
    env = dict(os.environ, PYTHONPATH=ROOT, NPSN_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for name in [n for n in env if n.startswith(("PMI_", "MPI_LOCAL", "OMPI_", "PMIX_"))]:
        del env[name]
    return env


def start_training(archive, run, *options, **popen):
    """A train_cifar.py subprocess on a new run ``run`` (a million iterations: it trains until it is stopped)."""
    argv = [sys.executable, os.path.join(SCRIPTS, "train_cifar.py"), "--data", archive, *TINY,
            "--iterations", "1000000", *NO_CHECKPOINT, "--out", run, *options]
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(argv, env=environment(), cwd=ROOT, **popen)


def wait_for(condition, process, what):
    """Poll ``condition()`` until it is true; fail if ``process`` ends first or TIMEOUT passes."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the training process ended ({process.returncode}) before {what}: "
                                 f"{process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {TIMEOUT} s")
        time.sleep(0.05)


def logged_iterations(run):
    """The iterations of the complete lines of run/log.jsonl (none before it exists)."""
    return [record["iteration"] for record in log_records(run)]


def training(archive, run):
    """A training subprocess on ``run`` that has logged its first iteration (and so holds the run's lock)."""
    process = start_training(archive, run)
    wait_for(lambda: logged_iterations(run), process, "first log line")
    return process


def stop(process):
    if process.poll() is None:
        process.kill()  # SIGKILL: also ends a stopped process
    process.wait(timeout=TIMEOUT)
    if process.stderr:
        process.stderr.close()


def one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_second_process_on_a_run_in_training_is_refused(archive, tmp_path, capsys):
    run = str(tmp_path / "run")
    first = training(archive, run)
    try:
        assert open(os.path.join(run, ".lock")).read() == f"{first.pid}\n"
        first.send_signal(signal.SIGSTOP)  # nothing moves in the folder while we look
        before = snapshot(tmp_path)
        busy = f"another process (pid {first.pid}) is training this run"
        assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "3", "--out", run) == 2
        err = one_line(capsys)
        assert f"--out {run}: {busy}; choose a new --out" in err, err
        assert run_main("train_cifar.py", "--resume", run, "--iterations", "5") == 2
        err = one_line(capsys)
        assert f"--resume {run}: {busy}; wait until it has stopped" in err, err
        assert run_main("train_classifier.py", "--resume", run) == 2
        assert busy in one_line(capsys)
        assert snapshot(tmp_path) == before
    finally:
        stop(first)


def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(archive, tmp_path, capsys):
    run = str(tmp_path / "run")
    stop(training(archive, run))  # SIGKILL: its lock goes with it, its lock file stays
    assert not os.path.exists(os.path.join(run, "checkpoint.npz")) and os.path.exists(os.path.join(run, ".lock"))
    assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "3", "--out", run) == 2
    assert f"continue it with --resume {run}" in one_line(capsys)
    assert run_main("train_cifar.py", "--resume", run, "--iterations", "3") == 0
    out = capsys.readouterr().out
    assert f"no checkpoint in {run} (the run stopped before its first one): starting it again from iteration 0 " \
           f"with its recorded settings" in out, out
    assert logged_iterations(run) == [1, 2, 3]  # the dead attempt's lines are gone, none is twice
    from npsn.gan.checkpoint import load_checkpoint
    assert load_checkpoint(os.path.join(run, "checkpoint.npz"))[1]["iteration"] == 3
    assert json.load(open(os.path.join(run, "config.json")))["iterations"] == 3


@pytest.mark.parametrize("closed", ["stdout", "stdout and stderr", "no stdout"])
def test_a_closed_stdout_does_not_stop_training(archive, tmp_path, closed):
    """As `train_cifar.py ... | head -1` once head has exited: every write to the pipe fails (EPIPE); or as
    `train_cifar.py ... >&-`: no stdout at all."""
    run = str(tmp_path / "run")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: deterministic
    streams = {"stdout": write_end, "stderr": write_end if closed == "stdout and stderr" else subprocess.PIPE}
    if closed == "no stdout":
        streams["preexec_fn"] = lambda: os.close(1)
    argv = [sys.executable, os.path.join(SCRIPTS, "train_cifar.py"), "--data", archive, *TINY, "--iterations", "3",
            "--out", run]
    try:
        done = subprocess.run(argv, env=environment(), cwd=ROOT, timeout=TIMEOUT, **streams)
    finally:
        os.close(write_end)
    err = (done.stderr or b"").decode()
    assert done.returncode == 0, err
    assert "Traceback" not in err and "free space" not in err and "Exception ignored" not in err, err
    from npsn.gan.checkpoint import load_checkpoint
    assert load_checkpoint(os.path.join(run, "checkpoint.npz"))[1]["iteration"] == 3
    assert logged_iterations(run) == [1, 2, 3]


def test_runs_started_in_the_same_second_get_their_own_folders(archive, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *args: "20260101-120000")
    for _ in range(3):
        assert run_main("train_cifar.py", "--data", archive, *TINY, "--iterations", "1") == 0
    assert sorted(os.listdir(tmp_path / "runs")) == ["cnn-20260101-120000", "cnn-20260101-120000-2",
                                                     "cnn-20260101-120000-3"]
    assert "run dir runs/cnn-20260101-120000-3" in capsys.readouterr().out
    for name in os.listdir(tmp_path / "runs"):
        assert logged_iterations(tmp_path / "runs" / name) == [1]


def test_new_run_dir_never_hands_out_a_folder_twice(tmp_path):
    from npsn.gan.rundir import new_run_dir
    base = str(tmp_path / "runs" / "cnn-x")
    assert [new_run_dir(base) for _ in range(3)] == [base, base + "-2", base + "-3"]


def test_a_lock_is_released_with_its_process_and_by_release(tmp_path):
    from npsn.gan.rundir import RunDirError, check_not_locked, claim_run_dir
    run = str(tmp_path / "run")
    with claim_run_dir(run, "--out"):
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            check_not_locked(run, "--resume")
        with pytest.raises(RunDirError, match="another process"):
            claim_run_dir(run, "--out")
    check_not_locked(run, "--resume")  # released
    claim_run_dir(run, "--out").release()  # the folder holds only the lock file: still a new run's
