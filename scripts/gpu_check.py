"""Acceptance check of npsn on a machine with an NVIDIA GPU: tests, GPU-vs-CPU numbers, speed, a short training.

    python scripts/gpu_check.py --data ../shared/data/cifar-10-python.tar.gz --out runs/gpu-check
    python scripts/gpu_check.py --steps compare,bench           # a subset of the steps

Steps (--steps, in this order; each reported PASS / FAIL with its figures):

1. ``tests``: the test suite's GPU runs (``pytest -k gpu`` with ``NPSN_TEST_GPU=cupy``: real CuPy
   on the device, never the stand-in) in a subprocess;
2. ``compare``: --compare-iterations float32 training iterations of --preset from the same seed
   and the same synthetic images on the CPU and on the GPU; their losses must agree within
   float32 tolerance (--rtol, --atol: the GPU sums in another order and may fuse a*b+c);
3. ``bench``: ``scripts/bench.py --device gpu`` (with ``--compare torch`` when PyTorch sees CUDA),
   its JSON line kept;
4. ``train``: ``scripts/train_cifar.py --device gpu`` for --iterations (200) on CIFAR-10
   (--data PATH, or --download), writing its run directory, with sample grids, under --out.

Without a usable GPU (no CuPy, no device, or the device check failing) it prints one line
saying so and exits 2, before doing anything. Exit 0 when every step passed, 1 otherwise.
Everything it measured is also written to --out/gpu_check.json.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # npsn without installing it

STEPS = ("tests", "compare", "bench", "train")


@dataclasses.dataclass
class GpuCheckConfig:
    """The check's settings (see the module docstring)."""
    steps: tuple = STEPS
    out: str = "runs/gpu-check"
    data: str = None
    download: bool = False
    iterations: int = 200
    preset: str = "cnn"
    batch_size: int = 64
    g_ch: int = None
    d_ch: int = None
    compare_iterations: int = 3
    rtol: float = 1e-3
    atol: float = 1e-4
    seed: int = 0


def step_list(text):
    steps = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}: choose from {','.join(STEPS)}")
    return steps


def parse_args(argv=None):
    """The command line as a :class:`GpuCheckConfig`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = GpuCheckConfig()
    p.add_argument("--steps", type=step_list, default=d.steps, help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--out", default=d.out, help="where the training run and gpu_check.json go (must not exist)")
    p.add_argument("--data", help="CIFAR-10 archive or folder for the train step")
    p.add_argument("--download", action="store_true", help="let the train step download CIFAR-10")
    p.add_argument("--iterations", type=int, default=d.iterations, help="training iterations of the train step")
    p.add_argument("--preset", default=d.preset, help="the model of the compare step (a train_cifar.py preset)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--g-ch", type=int, help="generator width of the compare step (default: the preset's)")
    p.add_argument("--d-ch", type=int, help="discriminator width of the compare step (default: the preset's)")
    p.add_argument("--compare-iterations", type=int, default=d.compare_iterations)
    p.add_argument("--rtol", type=float, default=d.rtol)
    p.add_argument("--atol", type=float, default=d.atol)
    p.add_argument("--seed", type=int, default=d.seed)
    args = p.parse_args(argv)
    for name in ("iterations", "batch_size", "compare_iterations"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    if "train" in args.steps and not (args.data or args.download):
        p.error("the train step needs CIFAR-10: give --data PATH or --download (or leave it out with --steps)")
    return GpuCheckConfig(**vars(args))


def run_tests():
    """The GPU runs of the test suite on real CuPy, in a subprocess."""
    env = dict(os.environ, NPSN_TEST_GPU="cupy")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gpu", "tests"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"passed": proc.returncode == 0, "summary": tail[0], "seconds": round(time.time() - start, 1)}


def compare_devices(config):
    """Losses of the same float32 iterations on CPU and GPU, and whether they agree within (rtol, atol)."""
    import numpy as np

    from npsn.gan.trainer import Trainer, preset_config

    n = config.batch_size
    images = np.random.default_rng(config.seed).integers(0, 256, (4 * n, 3, 32, 32), dtype=np.uint8)
    losses = {}
    for device in ("cpu", "gpu"):
        run_config = preset_config(config.preset, device=device, batch_size=n, g_ch=config.g_ch, d_ch=config.d_ch,
                                   seed=config.seed)
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(run_config, images, out)
            losses[device] = [list(trainer.train_iteration()) for _ in range(config.compare_iterations)]
    cpu, gpu = np.array(losses["cpu"]), np.array(losses["gpu"])
    return {"passed": bool(np.allclose(gpu, cpu, rtol=config.rtol, atol=config.atol)),
            "max_abs_difference": float(np.max(np.abs(gpu - cpu))), "rtol": config.rtol, "atol": config.atol,
            "losses_cpu": losses["cpu"], "losses_gpu": losses["gpu"]}


def torch_sees_cuda():
    try:
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


def run_bench():
    """scripts/bench.py --device gpu (--compare torch when PyTorch sees CUDA); its JSON record."""
    command = [sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--device", "gpu", "--json-only"]
    if torch_sees_cuda():
        command += ["--compare", "torch"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return {"passed": record is not None, "command": " ".join(command[1:]), "record": record,
            "error": None if record is not None else (proc.stderr.strip().splitlines() or [""])[-1]}


def run_training(config):
    """scripts/train_cifar.py --device gpu for config.iterations; the run directory and its grids."""
    run_dir = os.path.join(config.out, "train")
    command = [sys.executable, os.path.join(REPO, "scripts", "train_cifar.py"), "--device", "gpu",
               "--iterations", str(config.iterations), "--out", run_dir, "--sample-every", "100"]
    if config.data:
        command += ["--data", config.data]
    if config.download:
        command.append("--download")
    start = time.time()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    grids = sorted(f for f in os.listdir(run_dir) if f.endswith(".png")) if os.path.isdir(run_dir) else []
    return {"passed": proc.returncode == 0 and "samples_final.png" in grids, "run_dir": run_dir, "grids": grids,
            "seconds": round(time.time() - start, 1),
            "error": None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [""])[-1]}


def main(argv=None):
    config = parse_args(argv)
    from npsn import backend

    try:
        backend.check_device("gpu")  # imports CuPy and runs an elementwise kernel, a matmul and a reduction
    except backend.DeviceError as exc:
        print(f"gpu_check: no usable GPU here, nothing was checked: {exc}", file=sys.stderr)
        return 2
    if os.path.exists(config.out):
        print(f"error: --out {config.out} exists: give a new folder", file=sys.stderr)
        return 2
    os.makedirs(config.out)
    results = {}
    for step in config.steps:
        print(f"gpu_check: {step} ...", file=sys.stderr, flush=True)
        if step == "tests":
            results[step] = run_tests()
        elif step == "compare":
            results[step] = compare_devices(config)
        elif step == "bench":
            results[step] = run_bench()
        else:
            results[step] = run_training(config)
        brief = {k: v for k, v in results[step].items() if k not in ("record", "losses_cpu", "losses_gpu")}
        print(f"  {'PASS' if results[step]['passed'] else 'FAIL'} {step}: {json.dumps(brief)}", flush=True)
    with open(os.path.join(config.out, "gpu_check.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(config), "results": results}, f, indent=1)
    failed = [s for s, r in results.items() if not r["passed"]]
    print(f"gpu_check: {len(results) - len(failed)}/{len(results)} steps passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
