"""Data-parallel training with 2 MPI ranks (CPU), against one process: ``mpiexec -n 2`` subprocesses with timeouts.

Skipped, with the reason, without mpi4py or an ``mpiexec`` on PATH (``pip install -e '.[mpi]'`` or
``pip install mpi4py mpich``). The workers are ``tests/distributed_worker.py`` and the training script.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fake_cifar import write_fake_cifar
from npsn.gan.rundir import log_records

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distributed_worker.py")
SCRIPT = os.path.join(ROOT, "scripts", "train_cifar.py")
MPIEXEC = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
TIMEOUT = 120  # seconds for any one launch; a hang fails the test instead of the suite

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="needs mpi4py and mpiexec (pip install mpi4py mpich, or pip install -e '.[mpi]')")

sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402


def environment():
    env = dict(os.environ, PYTHONPATH=ROOT, NPSN_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for name in [n for n in env if n.startswith(("PMI_", "MPI_LOCAL", "OMPI_", "PMIX_"))]:
        del env[name]  # a test run under an MPI launcher must not pass its own rank on
    return env


def launch(*argv, ranks=2, check=True, cwd=ROOT):
    """``mpiexec -n ranks python argv...`` in ``cwd``; returns the CompletedProcess (stdout and stderr as text)."""
    done = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *argv], env=environment(), cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def checkpoint(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz")) as data:
        return {k: data[k] for k in data.files if k != "meta"}, json.loads(str(data["meta"]))


def assert_same_run(a, b):
    """Two float64 runs' checkpoints and logs agree to 1e-10.

    The biases of the convolutions right before a BatchNorm have an exact gradient of 0 (BN removes any
    shift), so theirs is rounding noise (~1e-16), which Adam turns into steps of lr g / eps: their values
    stay below 1e-8 in both runs but need not agree to 1e-10; they are checked to be that small.
    """
    (arrays_a, meta_a), (arrays_b, meta_b) = checkpoint(a), checkpoint(b)
    assert meta_a["iteration"] == meta_b["iteration"]
    assert sorted(arrays_a) == sorted(arrays_b)
    for key, value in arrays_a.items():
        other = arrays_b[key]
        assert value.dtype == other.dtype and value.shape == other.shape, key
        if np.issubdtype(value.dtype, np.floating) and np.max(np.abs(value), initial=0) < 1e-8:
            assert np.max(np.abs(other), initial=0) < 1e-8, key
            continue
        np.testing.assert_allclose(other, value, rtol=0, atol=1e-10, err_msg=key)
    assert len(log_records(a)) == len(log_records(b))
    for line_a, line_b in zip(log_records(a), log_records(b)):
        assert line_a["iteration"] == line_b["iteration"]
        np.testing.assert_allclose([line_b["loss_d"], line_b["loss_g"]], [line_a["loss_d"], line_a["loss_g"]],
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("model, iterations", [("cnn", 3), ("resnet", 2), ("cnn-conditional", 3), ("cnn-wgan-gp", 2)])
def test_two_ranks_train_as_one_process_at_the_same_global_batch(tmp_path, model, iterations):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    worker.train(model, iterations, one)
    launch(WORKER, "train", model, str(iterations), two)
    assert_same_run(one, two)
    assert sorted(os.listdir(two)) == sorted(os.listdir(one)) == ["checkpoint.npz", "log.jsonl", "samples_final.png"]


def test_resume_across_the_number_of_ranks(tmp_path):
    """2 ranks -> 1 process and 1 process -> 2 ranks continue the uninterrupted one-process run."""
    straight, two_then_one, one_then_two = (str(tmp_path / name) for name in ("straight", "2-1", "1-2"))
    worker.train("cnn", 4, straight)
    launch(WORKER, "train", "cnn", "2", two_then_one)
    worker.train("cnn", 4, two_then_one, resume=True)
    worker.train("cnn", 2, one_then_two)
    launch(WORKER, "train", "cnn", "4", one_then_two, "resume")
    assert_same_run(straight, two_then_one)
    assert_same_run(straight, one_then_two)


@pytest.fixture(scope="module")
def layer_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("layers") / "layers.npz")
    launch(WORKER, "layers", out)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def test_sync_batchnorm_is_batchnorm_of_the_concatenated_batch(layer_results):
    r = layer_results
    np.testing.assert_allclose(r["y"], r["y_ref"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(r["dx"], r["dx_ref"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(r["grads"], r["grads_ref"], rtol=0, atol=1e-12)  # d gamma, d beta summed over ranks
    np.testing.assert_allclose(r["stats"], r["stats_ref"], rtol=0, atol=1e-12)  # running mean and var


def test_sync_batchnorm_input_gradient_matches_central_differences_across_ranks(layer_results):
    numerical, analytic = layer_results["numerical"], layer_results["analytic"]
    assert np.all(np.abs(analytic) > 1e-3)  # probes where the gradient is not ~0
    np.testing.assert_allclose(numerical, analytic, rtol=1e-6)


def test_gradients_are_averaged_in_one_allreduce_per_dtype(layer_results):
    r = layer_results
    # rank k's gradient of parameter i is arange * (k + 1) + i; their mean over 2 ranks is arange * 1.5 + i
    expected = np.concatenate([-(np.arange(n) * 1.5 + i) for i, n in enumerate((6, 4, 3))])
    np.testing.assert_array_equal(r["params"], expected)
    assert list(r["calls"]) == ["<f8:10:mean", "<f4:3:mean"]


def test_a_failing_rank_stops_every_rank(tmp_path):
    start = time.monotonic()
    done = launch(WORKER, "fail", str(tmp_path / "run"), check=False)
    assert done.returncode != 0
    assert time.monotonic() - start < TIMEOUT
    assert "RuntimeError: injected failure" in done.stderr
    assert "error: rank 1 of 2 failed (RuntimeError); stopping all ranks" in done.stderr


# ---------------------------------------------------------------- the training script

TINY = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--log-every", "1"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


def test_script_trains_logs_once_and_resumes_with_another_number_of_ranks(archive, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    launch(SCRIPT, "--data", archive, *TINY, "--iterations", "2", "--out", one, ranks=1)
    done = launch(SCRIPT, "--distributed", "--data", archive, *TINY, "--iterations", "2", "--out", two)
    assert done.stdout.count("done: iteration 2") == 1  # rank 0 alone prints
    assert "global batch 8 = 2 x 4, G's BatchNorm synchronized" in done.stdout
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    assert [r["iteration"] for r in log_records(two)] == [1, 2]  # one line per iteration: rank 0 alone writes
    for a, b in zip(log_records(one), log_records(two)):  # float32: the same losses up to the rounding of the sums
        np.testing.assert_allclose([b["loss_d"], b["loss_g"]], [a["loss_d"], a["loss_g"]], rtol=1e-4, atol=1e-5)
    launch(SCRIPT, "--resume", two, "--iterations", "3", ranks=1)
    launch(SCRIPT, "--distributed", "--resume", two, "--iterations", "4")
    assert [r["iteration"] for r in log_records(two)] == [1, 2, 3, 4]


def test_script_refuses_a_batch_not_divisible_by_the_ranks_in_one_line(archive, tmp_path):
    out = tmp_path / "run"
    done = launch(SCRIPT, "--distributed", "--data", archive, *TINY[:4], "--batch-size", "7", "--out", str(out),
                  check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: argument --batch-size: 7 is the global batch and must be divisible by the 2 ranks; "
        "give a multiple of 2"]
    assert not out.exists()


@pytest.mark.parametrize("options, message", [
    ((), "started as 2 MPI ranks without --distributed: add --distributed (or run one process)"),
    (("--distributed", "--download"), "--download with --distributed would download once per rank"),
    # a conditional run passes the checks of the options and the data, to the ranks' own (it used to be refused)
    (("--distributed", "--conditional", "--batch-size", "7"), "argument --batch-size: 7 is the global batch"),
    (("--distributed", "--d-norm", "bn"), "argument --d-norm: bn (BatchNorm in D, per real and generated batch) "
                                          "is not offered with --distributed"),
])
def test_script_refuses_in_one_line_before_writing(archive, tmp_path, options, message):
    out = tmp_path / "run"
    done = launch(SCRIPT, "--data", archive, *TINY, "--out", str(out), *options, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message), done.stderr
    assert not out.exists()


def test_without_out_rank_0_names_the_run_for_every_rank(archive, tmp_path):
    launch(SCRIPT, "--distributed", "--data", archive, *TINY, "--iterations", "2", cwd=str(tmp_path))
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and [r["iteration"] for r in log_records(tmp_path / "runs" / runs[0])] == [1, 2]


def test_a_run_the_ranks_train_refuses_a_second_process(archive, tmp_path, capsys):
    from script_runner import run_main
    out = str(tmp_path / "run")
    process = _start_long_run(archive, out)
    try:
        rank_0 = int(open(os.path.join(out, ".lock")).read())  # rank 0 holds the run's lock
        assert run_main("train_cifar.py", "--resume", out, "--iterations", "5") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another process (pid {rank_0}) is training this run" in err, err
    finally:
        os.kill(rank_0, signal.SIGTERM)  # every rank stops after the same iteration
        process.communicate(timeout=TIMEOUT)


def _start_long_run(archive, out):
    process = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, SCRIPT, "--distributed", "--data", archive,
                                *TINY, "--iterations", "100000", "--out", out], env=environment(), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (os.path.exists(os.path.join(out, "log.jsonl")) and os.path.getsize(os.path.join(out, "log.jsonl"))):
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    return process


def _rank_pids(out):
    """The pids of the two ranks (the python processes running the script on this run directory)."""
    found = subprocess.run(["pgrep", "-f", f"{SCRIPT} --distributed .*--out {out}"], capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    return [p for p in pids if "mpiexec" not in open(f"/proc/{p}/cmdline").read()]


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep to find the ranks")
def test_sigterm_to_one_rank_stops_all_ranks_after_the_same_iteration_with_a_checkpoint(archive, tmp_path):
    out = str(tmp_path / "run")
    process = _start_long_run(archive, out)
    os.kill(max(_rank_pids(out)), signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 130, stderr
    _, meta = checkpoint(out)
    assert log_records(out)[-1]["iteration"] == meta["iteration"]  # the last completed iteration, logged and saved
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted at iteration {meta['iteration']}; checkpoint written. Continue with: "
        f"mpiexec -n 2 python scripts/train_cifar.py --distributed --resume {out}")


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep to find the ranks")
def test_a_killed_rank_ends_the_run(archive, tmp_path):
    out = str(tmp_path / "run")
    process = _start_long_run(archive, out)
    os.kill(max(_rank_pids(out)), signal.SIGKILL)
    process.communicate(timeout=TIMEOUT)  # no hang: mpiexec ends the other rank
    assert process.returncode != 0
