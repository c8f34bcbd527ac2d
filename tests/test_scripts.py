"""The command-line scripts end to end on a tiny fake CIFAR-10: train with evaluation, evaluate, plot, sample."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from fake_cifar import write_fake_cifar
from npsn import backend
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.rundir import log_records
from script_runner import SCRIPTS, run_main

TINY = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--sample-every", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0)


@pytest.fixture(scope="module")
def runs(archive, tmp_path_factory):
    """The same 4 iterations trained twice: with evaluation every 2 iterations, and without."""
    root = tmp_path_factory.mktemp("runs")
    with_eval, without_eval = str(root / "with_eval"), str(root / "without_eval")
    common = ["--data", archive, *TINY, "--iterations", "4"]
    assert run_main("train_cifar.py", *common, "--out", with_eval, "--eval-every", "2", "--eval-images", "20") == 0
    assert run_main("train_cifar.py", *common, "--out", without_eval) == 0
    return with_eval, without_eval


def test_evaluation_is_logged(runs):
    log = log_records(runs[0])
    evaluated = [r for r in log if "swd_mean" in r]
    assert [r["iteration"] for r in evaluated] == [2, 4]
    for r in evaluated:
        assert all(np.isfinite(r[k]) for k in ("swd_32", "swd_16", "swd_mean", "grad_norm_max", "grad_norm_mean"))
        assert 0 < r["grad_norm_mean"] <= r["grad_norm_max"] <= r["lipschitz_upper_bound"]
        assert [row["layer"] for row in r["spectral"]] == list(r["sigma"])
        for row in r["spectral"]:
            assert all(np.isfinite(row[k]) and row[k] > 0 for k in
                       ("sigma_power", "sigma_svd", "sigma_normalized_svd", "operator_norm"))


def test_evaluation_does_not_change_training(runs):
    with_eval, without_eval = (log_records(run) for run in runs)
    assert [(r["iteration"], r["loss_d"], r["loss_g"], r["sigma"]) for r in with_eval] == \
           [(r["iteration"], r["loss_d"], r["loss_g"], r["sigma"]) for r in without_eval]
    (arrays_a, meta_a), (arrays_b, meta_b) = (load_checkpoint(os.path.join(run, "checkpoint.npz")) for run in runs)
    assert meta_a["noise_state"] == meta_b["noise_state"]
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)


def test_evaluate_script_prints_a_table_and_writes_eval_json(runs, archive, capsys):
    run_dir = runs[0]
    assert run_main("evaluate.py", run_dir, "--data", archive, "--n", "16") == 0
    out = capsys.readouterr().out
    assert "SWD x 1e3" in out and "op. norm" in out
    with open(os.path.join(run_dir, "eval.json")) as f:
        result = json.load(f)
    assert result["iteration"] == 4 and result["n_generated"] == 16 and result["n_real"] == 16
    assert result["split"] == "test"
    assert np.isfinite(result["swd_mean"]) and result["grad_norm_max"] > 0
    assert len(result["spectral"]) == 8
    assert all(np.isfinite(row["operator_norm"]) for row in result["spectral"])


def test_evaluate_errors_are_one_line(runs, archive, tmp_path, capsys):
    assert run_main("evaluate.py", str(tmp_path / "no-such-run"), "--data", archive) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-run" in err
    assert run_main("evaluate.py", runs[0], "--data", str(tmp_path / "no-data.tar.gz")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-data.tar.gz" in err
    assert run_main("evaluate.py", runs[0], "--data", str(tmp_path / "no-data"), "--device", "tpu") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tpu" in err and "no-data" not in err  # the device is checked first


def test_plot_run_writes_every_plot(runs):
    pytest.importorskip("matplotlib")
    assert run_main("plot_run.py", runs[0]) == 0
    assert sorted(os.listdir(os.path.join(runs[0], "plots"))) == [
        "grad_norm.png", "losses.png", "operator_norm.png", "sigma.png", "swd.png"]
    assert run_main("plot_run.py", runs[1]) == 0  # no evaluation records: losses and sigmas only
    assert sorted(os.listdir(os.path.join(runs[1], "plots"))) == ["losses.png", "sigma.png"]


def test_plot_run_without_matplotlib_says_how_to_install_it(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert run_main("plot_run.py", runs[1]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[plot]'" in err


def test_sample_writes_a_png_grid_and_an_npz(runs, tmp_path):
    png, npz = str(tmp_path / "grid.png"), str(tmp_path / "images.npz")
    assert run_main("sample.py", runs[0], "--n", "16", "--out", png, "--seed", "3") == 0
    checkpoint = os.path.join(runs[0], "checkpoint.npz")
    assert run_main("sample.py", checkpoint, "--n", "10", "--out", npz, "--seed", "3") == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 4 x 4 tiles of 32 + 2 padding
    with np.load(npz) as data:
        images = data["images"]
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.uint8
    # the same seed gives the same first z: the grid's first tile is the first image
    np.testing.assert_array_equal(grid[2:34, 2:34], images[0].transpose(1, 2, 0))


def test_sample_errors_are_one_line(runs, tmp_path, capsys):
    out = str(tmp_path / "s.png")
    assert run_main("sample.py", runs[0], "--out", out, "--device", "tpu") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tpu" in err
    if not backend.gpu_available():
        assert run_main("sample.py", runs[0], "--out", out, "--device", "gpu") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cupy" in err.lower()
    assert run_main("sample.py", runs[0], "--out", str(tmp_path / "s.jpg")) == 2
    assert ".png or .npz" in capsys.readouterr().err
    assert run_main("sample.py", str(tmp_path / "missing"), "--out", out) == 2
    assert "missing" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_every_script_imports_the_blas_preamble_before_numpy():
    """scripts/preamble.py is the one home of the BLAS environment: each script imports it before NumPy or npsn."""
    import ast

    for name in sorted(os.listdir(SCRIPTS)):
        if not name.endswith(".py") or name == "preamble.py":
            continue
        tree = ast.parse(open(os.path.join(SCRIPTS, name)).read())
        imported = []
        for node in tree.body:  # module-level imports, in order
            if isinstance(node, ast.Import):
                imported += [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported.append((node.module or "").split(".")[0])
        assert "preamble" in imported, f"{name} does not import preamble"
        first = imported.index("preamble")
        assert not {"numpy", "npsn", "benchmarks"} & set(imported[:first]), f"{name} imports NumPy/npsn before preamble"
