"""scripts/gpu_check.py, the acceptance command for a machine with a GPU: its arguments, its no-GPU line, and
its CPU-vs-GPU comparison step run on the strict CuPy stand-in."""
import json

import pytest

from npsn import backend
from script_runner import run_main


def run_check(*argv):
    try:
        return run_main("gpu_check.py", *argv)
    except SystemExit as exc:  # argparse
        return exc.code


@pytest.mark.parametrize("argv, message", [
    (["--steps", "tests,fly"], "unknown step"),
    (["--steps", "compare", "--compare-iterations", "0"], "--compare-iterations: must be at least 1"),
    (["--steps", "train"], "give --data PATH or --download"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    assert run_check(*argv) == 2
    assert message in capsys.readouterr().err


def test_without_a_usable_gpu_it_says_so_in_one_line(strict_gpu, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(backend, "_CHECKED", set())
    with strict_gpu.broken("driver"):
        assert run_check("--steps", "compare", "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: no usable GPU here"), err
    assert not (tmp_path / "out").exists()


def test_on_a_machine_without_gpu_it_exits_2(tmp_path, capsys):
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    assert run_check("--steps", "compare", "--out", str(tmp_path / "out")) == 2
    assert "no usable GPU here" in capsys.readouterr().err


def test_compare_step_on_the_stand_in(strict_gpu, tmp_path):
    out = tmp_path / "out"
    assert run_check("--steps", "compare", "--g-ch", "16", "--d-ch", "8", "--batch-size", "8",
                     "--compare-iterations", "2", "--out", str(out)) == 0
    result = json.loads((out / "gpu_check.json").read_text())["results"]["compare"]
    assert result["passed"] and len(result["losses_gpu"]) == 2
    assert result["max_abs_difference"] <= 1e-5  # the stand-in computes with NumPy
    assert run_check("--steps", "compare", "--out", str(out)) == 2  # never into an existing folder
