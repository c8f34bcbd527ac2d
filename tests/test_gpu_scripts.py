"""The scripts' GPU path end to end on the strict CuPy stand-in: train, checkpoint, resume, sample, evaluate.

``--device gpu`` runs through train_cifar.py, sample.py and evaluate.py in-process with device
"gpu" = the stand-in (tests/strict_cupy), so any implicit host conversion, NumPy-only name or
keyword on the way raises. The stand-in computes with NumPy, so its numbers must match the
CPU run's (up to the order of float32 sums); exact resuming must hold on the GPU path too.
"""
import os

import numpy as np
import pytest
from PIL import Image

from fake_cifar import write_fake_cifar
from npsn.gan.rundir import log_records
from script_runner import run_main

TINY = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--log-every", "1"]


def losses(run_dir):
    return np.array([(r["loss_d"], r["loss_g"]) for r in log_records(run_dir)])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


def test_train_checkpoint_resume_sample_evaluate_on_the_gpu_path(archive, tmp_path, strict_gpu):
    common = ["--data", archive, *TINY, "--sample-every", "2", "--checkpoint-every", "2"]
    full, split, cpu = (str(tmp_path / name) for name in ("full", "split", "cpu"))
    with strict_gpu.counting() as counts:
        assert run_main("train_cifar.py", *common, "--iterations", "4", "--out", full, "--device", "gpu",
                        "--eval-every", "4", "--eval-images", "20") == 0
    assert counts.ops > 0 and counts.syncs > 0  # it really ran on the stand-in
    assert {"checkpoint.npz", "samples_000002.png", "samples_final.png"} <= set(os.listdir(full))
    assert "swd_mean" in log_records(full)[-1]

    # the same run on the CPU: the same losses (the stand-in computes with NumPy)
    assert run_main("train_cifar.py", *common, "--iterations", "4", "--out", cpu, "--device", "cpu") == 0
    np.testing.assert_allclose(losses(full), losses(cpu), rtol=1e-5, atol=1e-6)

    # 2 iterations, then --resume to 4: the uninterrupted run's log, exactly
    assert run_main("train_cifar.py", *common, "--iterations", "2", "--out", split, "--device", "gpu") == 0
    assert run_main("train_cifar.py", "--resume", split, "--iterations", "4", "--device", "gpu") == 0
    np.testing.assert_array_equal(losses(split), losses(full))

    png, npz = str(tmp_path / "s.png"), str(tmp_path / "s.npz")
    assert run_main("sample.py", full, "--n", "16", "--out", png, "--device", "gpu", "--seed", "3") == 0
    assert run_main("sample.py", full, "--n", "10", "--out", npz, "--device", "gpu", "--seed", "3") == 0
    assert Image.open(png).size[0] > 0 and np.load(npz)["images"].shape[0] == 10
    assert run_main("evaluate.py", full, "--data", archive, "--n", "16", "--device", "gpu") == 0


def test_toy_2d_on_the_gpu_path_and_its_worker_start_method(tmp_path, strict_gpu):
    out = str(tmp_path / "toy")
    with strict_gpu.counting() as counts:
        summary = run_main("toy_2d.py", "--dataset", "ring", "--sn", "--seeds", "1", "--iterations", "3",
                           "--batch-size", "16", "--eval-samples", "64", "--out", out, "--device", "gpu")
    assert isinstance(summary, dict) and counts.ops > 0  # main returns the summary (2 for an unusable GPU)
    assert os.path.exists(os.path.join(out, "results.json"))
    from npsn.experiments.toy import worker_pool_context

    # a forked child cannot use the parent's CUDA context: spawn on the GPU, the platform default on the CPU
    assert worker_pool_context("gpu").get_start_method() == "spawn" and worker_pool_context("cpu") is None


def test_breakdown_synchronizes_around_each_timed_kernel(monkeypatch):
    from benchmarks.breakdown import time_breakdown
    from npsn.nn import conv

    events = []
    monkeypatch.setattr(conv, "gather_forward", lambda: events.append("kernel"))

    class Side:
        def synchronize(self):
            events.append("sync")

        def iteration(self):
            conv.gather_forward()

    parts = time_breakdown(Side(), repeats=1, warmup=0)
    # around the iteration, and inside it around the kernel: the clock never times queued work
    assert events == ["sync", "sync", "kernel", "sync", "sync"]
    assert conv.gather_forward.__name__ == "<lambda>" and parts["iteration"] >= parts["matrix_products"]
