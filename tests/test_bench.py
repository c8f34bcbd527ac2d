"""Smoke tests of the benchmark (scripts/bench.py and its harness, benchmarks/) on tiny models.

The command line runs as the script itself (a subprocess: it sets thread variables before NumPy
loads and probes memory in fresh processes) and needs no PyTorch; the harness's modules are
imported directly (``python -m pytest`` from the repository root has it on ``sys.path``), and the
PyTorch side (mirror, check, alternating timing) is tested in-process where torch is installed.
"""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import config as bench_config
from benchmarks.config import BenchConfig, count_for, parse_args, per_model
from benchmarks.environment import is_glibc
from benchmarks.phases import PHASES, NpsnSide, TorchSide, fixed_inputs, make_trainer
from benchmarks.timing import time_phases
from npsn.testing.torch_reference import compare_training, relative_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "bench.py")
TINY = ["--g-ch", "8", "--d-ch", "8", "--batch-size", "4"]


def test_per_model_counts():
    assert per_model("7") == {None: 7}
    counts = per_model("cnn=10,resnet=3")
    assert count_for(counts, "resnet", 99) == 3
    assert count_for(per_model("resnet=3"), "cnn", 10) == 10
    assert count_for(per_model("4,resnet=1"), "cnn", 10) == 4
    with pytest.raises(Exception):
        per_model("gan=3")
    config = BenchConfig(repeats=per_model("cnn=10,resnet=3"), warmup=per_model("1"))
    assert (config.repeats_for("resnet"), config.warmup_for("resnet"), config.warmup_for("cnn")) == (3, 1, 1)
    with pytest.raises(ValueError):
        BenchConfig(models=["gan"])


def test_relative_error():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0, 2.5], [1.0, 2.0]) == pytest.approx(0.25)
    assert relative_error([0.5], [0.0]) == 0.5


def test_config_and_preamble_load_before_numpy():
    """The entry point parses its config and sets thread variables before anything imports NumPy."""
    code = ("import sys; sys.path.insert(0, 'scripts'); import preamble, os; import benchmarks.config; "
            "assert 'numpy' not in sys.modules, 'numpy loaded'; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"
    with open(SCRIPT) as f:
        source = f.read()
    first_import = next(line for line in source.splitlines() if line.startswith(("import ", "from ")))
    assert first_import.startswith("import preamble")


def test_probe_arguments_round_trip():
    """A memory probe's flags rebuild the run's settings for one model and one side."""
    config = BenchConfig(device="cpu", batch_size=4, threads=2, malloc="default", g_ch=8, d_ch=8, seed=3)
    probe = parse_args(config.probe_arguments("resnet", "torch"))
    assert probe.probe_memory == "torch" and probe.models == ["resnet"] and probe.json_only
    for name in ("device", "batch_size", "threads", "malloc", "g_ch", "d_ch", "seed"):
        assert getattr(probe, name) == getattr(config, name), name


def test_npsn_benchmark_runs_on_tiny_models():
    done = subprocess.run([sys.executable, SCRIPT, "--models", "cnn,resnet", "--repeats", "1", "--warmup", "0",
                           "--json-only", "--breakdown", *TINY], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # --json-only: one JSON line and nothing else
    record = json.loads(lines[0])
    assert record["compare"] == "none" and "torch" not in record["versions"]
    assert record["batch_size"] == 4
    assert record["environment"]["OPENBLAS_THREAD_TIMEOUT"] == os.environ.get("OPENBLAS_THREAD_TIMEOUT", "4")
    if is_glibc():
        assert record["malloc"]["mode"] == "no-trim" and record["malloc"]["keep_freed_memory"] is True
    for model in ("cnn", "resnet"):
        r = record["models"][model]
        assert r["repeats"] == 1 and r["config"]["g_ch"] == 8 and r["config"]["n_dis"] == 1
        assert set(r["phases"]) == {phase for phase, _ in PHASES}
        for phase in r["phases"].values():
            assert list(phase) == ["npsn"]
            assert phase["npsn"]["median_s"] > 0 and len(phase["npsn"]["times_s"]) == 1
        parts = r["breakdown"]
        assert min(parts.values()) > 0
        assert parts["matrix_products"] + parts["im2col_col2im"] + parts["other"] == pytest.approx(parts["iteration"])
        memory = r["memory"]["npsn"]
        assert "error" not in memory, memory
        assert memory["host_rss_peak"] >= memory["host_rss_baseline"] > 0


def test_default_malloc_leaves_the_allocator_alone():
    done = subprocess.run([sys.executable, SCRIPT, "--models", "cnn", "--repeats", "1", "--warmup", "0",
                           "--memory", "off", "--malloc", "default", "--json-only", *TINY],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["malloc"]["keep_freed_memory"] is False and "memory" not in record["models"]["cnn"]


def test_torch_side_has_npsn_names_and_outputs(tmp_path):
    pytest.importorskip("torch")
    config = BenchConfig(compare="torch", g_ch=8, d_ch=8, batch_size=4)
    for model in bench_config.MODELS:
        trainer, images = make_trainer(config, model, str(tmp_path / model))
        x, z = fixed_inputs(trainer, images)
        ours, theirs = NpsnSide(trainer, x, z), TorchSide(trainer, x, z)
        assert set(theirs.trainer.G.state_dict()) == set(trainer.G.state_dict())
        assert set(theirs.trainer.D.state_dict()) == set(trainer.D.state_dict())
        check = compare_training(trainer, theirs.trainer, x, z)
        assert check["ok"], check
        results = time_phases([ours, theirs], repeats=1, warmup=0, settle=0, progress=lambda text: None)
        assert all(set(r) == {"npsn", "torch"} for r in results.values())


def test_widths_time_each_width_of_each_model_in_one_run():
    """--widths 128/16,256/32: one result per (width, model), each config with one width."""
    config = parse_args(["--models", "cnn,resnet", "--widths", "128/16,256/32"])
    runs = config.runs()
    assert [key for key, _, _ in runs] == ["cnn@128/16", "resnet@128/16", "cnn@256/32", "resnet@256/32"]
    assert [(c.g_ch, c.d_ch, c.widths, m) for _, c, m in runs][1] == (128, 16, None, "resnet")
    assert [key for key, _, _ in BenchConfig(models=["cnn"]).runs()] == ["cnn"]
    with pytest.raises(ValueError, match="not both"):
        BenchConfig(widths=[(8, 8)], g_ch=8)
    for bad in ("128", "128/0", "a/b", "128/16,"):
        with pytest.raises(SystemExit):
            parse_args(["--widths", bad])
