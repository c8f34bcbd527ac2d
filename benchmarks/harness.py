"""A benchmark run end to end: per model, build, check against PyTorch, time, break down, probe memory.

Entered from ``scripts/bench.py`` through :func:`main`, after the thread variables are set
(NumPy, npsn and PyTorch load here). Output: the tables (:mod:`benchmarks.report`) on stdout,
progress on stderr, then one JSON line with every number (``json_only``: the JSON only).
"""
import gc
import json
import os
import sys
import tempfile

import npsn  # noqa: F401  (loads NumPy after the thread settings)
from benchmarks.breakdown import time_breakdown
from benchmarks.environment import apply_allocator, environment_report, import_torch, limit_threads
from benchmarks.launches import count_iteration
from benchmarks.memory import freed_memory_is_reused, peak_rss, probe_memory, run_probe
from benchmarks.phases import NpsnSide, TorchSide, fixed_inputs, make_trainer
from benchmarks.report import format_report
from benchmarks.timing import time_phases
from npsn.gan.models import DEFAULT_WIDTHS
from npsn.gan.trainer import PRESETS
from npsn.testing.torch_reference import compare_training


def model_config(trainer, model):
    """The widths, loss, optimizer and parameter counts that the report shows for ``model``."""
    c = trainer.config
    return {"g_ch": c.g_ch or DEFAULT_WIDTHS[model][0], "d_ch": c.d_ch or DEFAULT_WIDTHS[model][1],
            "loss": c.loss, "lr": c.lr, "beta1": c.beta1, "beta2": c.beta2,
            "preset_n_dis": PRESETS[model]["n_dis"], "n_dis": c.n_dis,
            "g_parameters": sum(p.data.size for p in trainer.G.parameters()),
            "d_parameters": sum(p.data.size for p in trainer.D.parameters())}


def benchmark_model(config, model, torch, progress):
    """Build, check, time and (optionally) break down and probe one model; returns its results dict.

    With ``torch``, the PyTorch side is built from the npsn trainer's initial weights and
    checked (:func:`npsn.testing.torch_reference.compare_training`: outputs and D's input
    gradient in float64 and float32, and two training iterations' losses) before both are
    timed, alternately, phase by phase, and npsn / torch ratios are computed.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, images = make_trainer(config, model, out_dir)
        x, z = fixed_inputs(trainer, images)
        result = {"config": model_config(trainer, model)}
        sides, theirs = [NpsnSide(trainer, x, z)], None
        if torch is not None:
            theirs = TorchSide(trainer, x, z)
            progress(f"{model}: checking npsn against torch")
            result["check"] = compare_training(trainer, theirs.trainer, x, z)
            sides.append(theirs)
        repeats, warmup = config.repeats_for(model), config.warmup_for(model)
        result.update(repeats=repeats, warmup=warmup)
        progress(f"{model}: timing ({repeats} repeats after {warmup} warm-up calls per phase)")
        result["phases"] = time_phases(sides, repeats, warmup, config.settle, progress)
        if torch is not None:
            result["ratios"] = {phase: r["npsn"]["median_s"] / r["torch"]["median_s"]
                                for phase, r in result["phases"].items()}
        if config.breakdown:
            progress(f"{model}: npsn time breakdown")
            result["breakdown"] = time_breakdown(sides[0], repeats, warmup)
        del sides, trainer, theirs
    if config.device == "gpu":
        progress(f"{model}: device operations per iteration (strict CuPy stand-in)")
        result["launches"] = count_iteration(config, model)
    gc.collect()
    if config.memory == "probe":
        progress(f"{model}: peak memory probes")
        result["memory"] = {side: run_probe(config, model, side)
                            for side in (["npsn", "torch"] if torch is not None else ["npsn"])}
    return result


def run(config, allocator_applied=False):
    """The whole benchmark; prints the tables (unless ``json_only``) and the JSON line, returns the record."""
    def progress(text):
        if not config.json_only:
            print(text, file=sys.stderr, flush=True)

    torch, why_not = None, "not requested"
    if config.compare == "torch":
        torch, why_not = import_torch(config.device, config.threads)
    limit_threads(config.threads)
    if config.device == "gpu":
        from npsn import backend
        backend.check_device("gpu")
    env = environment_report(config, torch, allocator_applied)
    env["malloc"]["freed_64MiB_block_reused"] = freed_memory_is_reused()
    results = {}
    for key, run_config, model in config.runs():
        results[key] = benchmark_model(run_config, model, torch, progress)
        if torch is None and config.compare == "torch":
            results[key]["compare_skipped"] = why_not
    env["malloc"]["freed_64MiB_block_reused_after"] = freed_memory_is_reused()
    env["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    record = dict(env, benchmark="npsn", compare=config.compare if torch is not None else "none",
                  host_peak_rss_this_process=peak_rss(), models=results)
    if not config.json_only:
        print(format_report(env, results))
    print(json.dumps(record))
    return record


def main(config):
    """Apply the allocator setting, then run the benchmark, or one memory probe (``config.probe_memory``)."""
    allocator_applied = apply_allocator(config.malloc)
    if config.probe_memory:
        probe_memory(config)
    else:
        run(config, allocator_applied)
