"""Smoke tests of scripts/bench.py on tiny models (widths 8, batch 4, one repetition).

The npsn part runs as the script itself (a subprocess: it restarts itself under the allocator
setting and probes memory in fresh processes) and needs no PyTorch; the PyTorch comparison
(architecture conversion, weight copy, output check) is tested in-process where torch is installed.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "bench.py")
TINY = ["--g-ch", "8", "--d-ch", "8", "--batch-size", "4"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_per_model_counts():
    assert bench.per_model("7") == {None: 7}
    counts = bench.per_model("cnn=10,resnet=3")
    assert bench.count_for(counts, "resnet", 99) == 3
    assert bench.count_for(bench.per_model("resnet=3"), "cnn", 10) == 10
    assert bench.count_for(bench.per_model("4,resnet=1"), "cnn", 10) == 4
    with pytest.raises(Exception):
        bench.per_model("gan=3")


def test_relative_error():
    assert bench.relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert bench.relative_error([1.0, 2.5], [1.0, 2.0]) == pytest.approx(0.25)
    assert bench.relative_error([0.5], [0.0]) == 0.5


def test_npsn_benchmark_runs_on_tiny_models():
    env = {k: v for k, v in os.environ.items() if k != bench.RESTARTED}
    done = subprocess.run([sys.executable, SCRIPT, "--models", "cnn,resnet", "--repeats", "1", "--warmup", "0",
                           "--json-only", "--breakdown", *TINY], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # --json-only: one JSON line and nothing else
    record = json.loads(lines[0])
    assert record["compare"] == "none" and "torch" not in record["versions"]
    assert record["batch_size"] == 4
    if bench.is_glibc():
        assert record["malloc"]["environment"] == bench.MALLOC_SETTINGS["no-trim"]
    for model in ("cnn", "resnet"):
        r = record["models"][model]
        assert r["repeats"] == 1 and r["config"]["g_ch"] == 8 and r["config"]["n_dis"] == 1
        assert set(r["phases"]) == {phase for phase, _ in bench.PHASES}
        for phase in r["phases"].values():
            assert list(phase) == ["npsn"]
            assert phase["npsn"]["median_s"] > 0 and len(phase["npsn"]["times_s"]) == 1
        parts = r["breakdown"]
        assert min(parts.values()) > 0
        assert parts["matrix_products"] + parts["im2col_col2im"] + parts["other"] == pytest.approx(parts["iteration"])
        memory = r["memory"]["npsn"]
        assert "error" not in memory, memory
        assert memory["host_rss_peak"] >= memory["host_rss_baseline"] > 0


def test_torch_model_has_npsn_names_and_outputs(tmp_path):
    pytest.importorskip("torch")
    args = bench.parse_args(["--compare", "torch", *TINY])
    for model in ("cnn", "resnet"):
        trainer, images = bench.make_trainer(args, model, str(tmp_path / model))
        x, z = bench.fixed_inputs(trainer, images)
        ours, theirs = bench.NpsnSide(trainer, x, z), bench.TorchSide(trainer, images, x, z)
        assert set(theirs.G.state_dict()) == set(trainer.G.state_dict())
        assert set(theirs.D.state_dict()) == set(trainer.D.state_dict())
        check = bench.check_against_torch(ours, theirs)
        assert check["ok"], check
        results = bench.time_phases([ours, theirs], repeats=1, warmup=0, settle=0, progress=lambda text: None)
        assert all(set(r) == {"npsn", "torch"} for r in results.values())
