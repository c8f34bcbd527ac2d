"""Mode collapse on 2-D mixtures of Gaussians (PacGAN's ring and grid): npsn GANs with and without SN.

    python scripts/toy_2d.py                                   # ring and grid, SN and no-SN, 5 seeds
    python scripts/toy_2d.py --dataset ring --sn --seeds 3 --iterations 2000
    python scripts/toy_2d.py --loss hinge --out runs/toy2d-hinge --jobs 2
    python scripts/toy_2d.py --lr 1e-4 --beta1 0.8 --d-init normal --iterations 400000   # PacGAN's settings
    python scripts/toy_2d.py --d-input-scale 10 --iterations 30000   # the scaled protocol (see below)

The scaled protocol: with SN, D is at most 1-Lipschitz in its input, and the mixtures are tiny
in those units (ring modes 0.77 apart with std 0.01: a 1-Lipschitz D can move its logit by at
most 0.03 across a mode's 3-std disc), so SN's D barely separates real from generated points
at the data's own scale. --d-input-scale s feeds D s*x (an s-Lipschitz critic in x, the same as
measuring the data in units of 1/s); s = 10 lets SN cover the modes. Compare methods at the
same s, and run long enough (8,000 iterations is short; average the last few --eval-every
records, the HQ fraction swings 10-20 points between them). docs/toy-2d.md
has the measured table.

Each run trains PacGAN's MLPs (npsn.experiments.toy) and measures, on 2,500 generated points, the modes
covered, the % of high-quality samples (within 3 std of the nearest mode) and the reverse KL of
the mode histogram. The script prints a table of mean +- std over seeds next to the numbers
published in PacGAN's Table 1, and writes into --out:

    results.json                      every run's metrics and losses, the summary, the command
    table.md                          the printed table
    scatter_<dataset>_<sn|nosn>.png   real (grey) and generated points of the first seed
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# PacGAN, Table 1 (Lin et al. 2018): modes covered and % high-quality samples, averaged over runs.
PUBLISHED = {
    "ring": [("GAN (PacGAN Tab. 1)", 6.3, 98.2), ("PacGAN4 (PacGAN Tab. 1)", 7.8, 95.9)],
    "grid": [("GAN (PacGAN Tab. 1)", 17.3, 94.8), ("PacGAN4 (PacGAN Tab. 1)", 24.8, 93.6)],
}

# --threads is read before the other options: BLAS takes its thread count from the environment
# when NumPy is imported, and the other options' choices and defaults come from npsn, which imports NumPy.
THREADS_OPTION = argparse.ArgumentParser(add_help=False)
THREADS_OPTION.add_argument(
    "--threads", type=int, default=1,
    help="BLAS threads per process (these matrices are small: more threads mostly add overhead)")


def set_blas_threads(argv=None):
    """Put --threads into the BLAS environment, before NumPy is imported (here and in worker processes)."""
    threads = THREADS_OPTION.parse_known_args(argv)[0].threads
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def parse_args(argv=None):
    """The command line. Choices and defaults come from npsn (its registries and ToyConfig), so this
    imports npsn and NumPy: call :func:`set_blas_threads` first."""
    sys.path.insert(0, REPO)
    from npsn import backend
    from npsn.data.mixtures import DATASETS
    from npsn.gan.losses import LOSSES
    from npsn.gan.mlp import D_ACTIVATIONS, D_INITS
    from npsn.experiments.toy import ToyConfig

    default = ToyConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[THREADS_OPTION])
    p.add_argument("--dataset", choices=(*DATASETS, "both"), default="both")
    sn = p.add_mutually_exclusive_group()
    sn.add_argument("--sn", dest="methods", action="store_const", const=["SN"], help="only D with spectral norm")
    sn.add_argument("--no-sn", dest="methods", action="store_const", const=["no-SN"], help="only D without")
    sn.add_argument("--both", dest="methods", action="store_const", const=["no-SN", "SN"],
                    help="both (the default)")
    p.set_defaults(methods=["no-SN", "SN"])
    p.add_argument("--loss", choices=tuple(LOSSES), default=default.loss, help="GAN loss (PacGAN: nonsaturating)")
    p.add_argument("--iterations", type=int, default=default.iterations,
                   help="generator updates per run (PacGAN: 400,000)")
    p.add_argument("--seeds", type=int, default=5,
                   help="runs per (dataset, method): seeds first-seed, first-seed+1, ...")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=default.batch_size)
    p.add_argument("--lr", type=float, default=default.lr, help="Adam step size (PacGAN: 1e-4)")
    p.add_argument("--beta1", type=float, default=default.beta1, help="(PacGAN: 0.8)")
    p.add_argument("--beta2", type=float, default=default.beta2)
    p.add_argument("--n-dis", type=int, default=default.n_dis, help="D updates per G update")
    p.add_argument("--d-activation", choices=tuple(D_ACTIVATIONS), default=default.d_activation,
                   help="D's nonlinearity, standing in for PacGAN's 5-piece maxout")
    p.add_argument("--d-init", choices=D_INITS, default=default.d_init,
                   help="D's weights: npsn's (PyTorch's) default, or PacGAN's N(0, 0.02^2)")
    p.add_argument("--d-input-scale", type=float, default=default.d_input_scale,
                   help="D sees s*x: with SN, an s-Lipschitz critic in x (PacGAN: 1)")
    p.add_argument("--eval-samples", type=int, default=default.eval_samples)
    p.add_argument("--device", choices=backend.DEVICES, default=default.device)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--log-every", type=int, default=0, help="print losses every N iterations (0: off)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also record the metrics every N iterations (in results.json; 0: only at the end)")
    p.add_argument("--out", default=os.path.join("runs", "toy2d"), help="output folder")
    return p.parse_args(argv)


def run_one(config_dict, log_every=0, eval_every=0):
    """Train and evaluate one run (in a worker process when --jobs > 1); returns the result dict."""
    from npsn.experiments.toy import ToyConfig, train

    config = ToyConfig(**config_dict)
    result = train(config, log_every=log_every, eval_every=eval_every)
    m = result["metrics"]
    print(f"{config.dataset:4s} {config.method:5s} seed {config.seed}: modes {m['modes']:2d}/"
          f"{len(m['mode_counts'])}  HQ {100 * m['hq_fraction']:5.1f}%  reverse KL {m['reverse_kl']:.3f}"
          f"  ({result['seconds']:.0f} s)", flush=True)
    return result


def method_label(method, d_input_scale):
    """"SN" / "no-SN", with D's input scale when it is not 1 (e.g. "SN, D(10x)")."""
    return method if d_input_scale == 1 else f"{method}, D({d_input_scale:g}x)"


def format_table(summary, datasets, methods, seeds, d_input_scale=1.0):
    """The results table (Markdown) with the published rows of each dataset."""
    def pm(mean_std, digits):
        mean, std = mean_std
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines = ["| dataset | method | modes | HQ % | reverse KL |", "|---|---|---|---|---|"]
    for dataset in datasets:
        for method in methods:
            s = summary[dataset][method]
            label = method_label(method, d_input_scale)
            lines.append(f"| {dataset} | npsn {label} ({seeds} seeds) | {pm(s['modes'], 1)} | "
                         f"{pm(s['hq_percent'], 1)} | {pm(s['reverse_kl'], 3)} |")
        for name, modes, hq in PUBLISHED[dataset]:
            lines.append(f"| {dataset} | {name} | {modes} | {hq} | |")
    return "\n".join(lines)


def main(argv=None):
    set_blas_threads(argv)
    args = parse_args(argv)
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    import numpy as np

    from npsn import backend
    from npsn.data.mixtures import DATASETS, get_dataset
    from npsn.eval.modes import summarize
    from npsn.experiments.toy import save_scatter

    from npsn.backend.threads import ThreadsError, environment_threads

    try:
        environment_threads()
        backend.check_device(args.device)  # runs a few kernels on the GPU before anything is written
    except (backend.DeviceError, ThreadsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    datasets = list(DATASETS) if args.dataset == "both" else [args.dataset]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    configs = [dict(dataset=d, sn=(m == "SN"), loss=args.loss, iterations=args.iterations,
                    batch_size=args.batch_size, lr=args.lr, beta1=args.beta1, beta2=args.beta2,
                    n_dis=args.n_dis, d_activation=args.d_activation, d_init=args.d_init,
                    d_input_scale=args.d_input_scale,
                    eval_samples=args.eval_samples, seed=s, device=args.device)
               for d in datasets for m in args.methods for s in seeds]
    os.makedirs(args.out, exist_ok=True)
    print(f"{len(configs)} runs of {args.iterations} iterations ({args.loss} loss, device {args.device}, "
          f"{args.jobs} job(s)) -> {args.out}", flush=True)

    start = time.time()
    if args.jobs > 1:
        from npsn.experiments.toy import worker_pool_context
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=worker_pool_context(args.device)) as pool:
            results = list(pool.map(partial(run_one, log_every=args.log_every, eval_every=args.eval_every), configs))
    else:
        results = [run_one(c, args.log_every, args.eval_every) for c in configs]
    total_seconds = time.time() - start

    summary, runs, pngs = {}, [], []
    for dataset in datasets:
        mixture = get_dataset(dataset)
        summary[dataset] = {}
        for method in args.methods:
            group = [r for r in results
                     if r["config"]["dataset"] == dataset and r["config"]["sn"] == (method == "SN")]
            summary[dataset][method] = summarize([r["metrics"] for r in group])
            first = group[0]
            m = first["metrics"]
            path = os.path.join(args.out, f"scatter_{dataset}_{'sn' if method == 'SN' else 'nosn'}.png")
            real = mixture.sample(len(first["samples"]), np.random.default_rng(12345))[0]
            title = (f"{dataset}, npsn {method_label(method, args.d_input_scale)}, {args.loss}, "
                     f"seed {first['config']['seed']}, "
                     f"{args.iterations} it: modes {m['modes']}/{mixture.num_modes}, "
                     f"HQ {100 * m['hq_fraction']:.1f}%, rev. KL {m['reverse_kl']:.3f}")
            pngs.append(save_scatter(path, real, first["samples"], mixture, title=title))
    for r in results:
        runs.append({k: v for k, v in r.items() if k != "samples"})

    table = format_table(summary, datasets, args.methods, len(seeds), args.d_input_scale)
    print()
    print(table)
    print(f"\n{len(results)} runs in {total_seconds / 60:.1f} min; scatter plots: {', '.join(pngs)}")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   "args": vars(args), "total_seconds": total_seconds,
                   "summary": summary, "published": PUBLISHED, "runs": runs, "scatter_png": pngs},
                  f, indent=1, allow_nan=True)
    return summary


if __name__ == "__main__":
    status = main()
    sys.exit(status if isinstance(status, int) else 0)  # main returns the summary, or 2 for an unusable device
