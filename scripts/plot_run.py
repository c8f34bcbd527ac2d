"""Plot a run's log: losses, SWD, per-layer sigmas and operator norms, gradient norms.

    python scripts/plot_run.py runs/cnn-20261123-120000
    python scripts/plot_run.py runs/cnn-20261123-120000 --out /tmp/plots    # a run you cannot write into

Reads RUN_DIR/log.jsonl and writes PNGs into --out (default RUN_DIR/plots/; created if missing,
checked to be writable before anything is drawn):

* ``losses.png``: loss_d and loss_g against the iteration;
* ``sigma.png``: each discriminator layer's power-iteration sigma (the "sigma" entry of every record);
* ``swd.png``: SWD x 1e3 per resolution (records written with --eval-every);
* ``operator_norm.png``: each spectral-normalized layer's operator norm on its input (--eval-every);
* ``grad_norm.png``: max and mean ||grad_x D(x)|| (a lower bound of Lip(D)) and, for the CNN
  discriminator, the product of operator norms (an upper bound) (--eval-every).

Needs matplotlib, an optional extra: ``pip install -e '.[plot]'`` in the repository.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import os
import sys

INSTALL_HINT = ("plot_run.py needs matplotlib: install it with `pip install -e '.[plot]'` in the repository "
                "(or `pip install matplotlib`)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory holding log.jsonl")
    p.add_argument("--out", metavar="DIR", help="where to write the plots (default: RUN_DIR/plots)")
    return p.parse_args(argv)


def series(records, key):
    """(iterations, values) of the records that have ``key`` with a non-None value."""
    kept = [r for r in records if r.get(key) is not None]
    return [r["iteration"] for r in kept], [r[key] for r in kept]


def per_layer(records, get_rows):
    """{layer: (iterations, values)} from ``get_rows(record) -> {layer: value}`` (records without it skipped)."""
    out = {}
    for r in records:
        for layer, value in (get_rows(r) or {}).items():
            its, values = out.setdefault(layer, ([], []))
            its.append(r["iteration"])
            values.append(value)
    return out


def save_figure(plt, lines, title, ylabel, path, log_y=False):
    """One figure of ``lines`` = [(label, xs, ys, style)], saved as ``path``."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, ys, style in lines:
        ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(lines) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_plots(plt, records, folder):
    """Write every plot the records have data for; returns the written paths."""
    written = []
    its_d, loss_d = series(records, "loss_d")
    its_g, loss_g = series(records, "loss_g")
    written.append(save_figure(plt, [("loss_d", its_d, loss_d, "-"), ("loss_g", its_g, loss_g, "-")],
                               "losses", "loss", os.path.join(folder, "losses.png")))

    sigmas = per_layer(records, lambda r: r.get("sigma"))
    if sigmas:
        written.append(save_figure(plt, [(layer, xs, ys, "-") for layer, (xs, ys) in sigmas.items()],
                                   "power-iteration sigma of each D layer", "sigma",
                                   os.path.join(folder, "sigma.png"), log_y=True))

    swd_keys = sorted({k for r in records for k in r if k.startswith("swd_")})
    if swd_keys:
        written.append(save_figure(plt, [(k, *series(records, k), "o-") for k in swd_keys],
                                   "Sliced Wasserstein distance (generated vs real)", "SWD x 1e3",
                                   os.path.join(folder, "swd.png")))

    norms = per_layer(records, lambda r: {row["layer"]: row["operator_norm"] for row in r.get("spectral") or []})
    if norms:
        written.append(save_figure(plt, [(layer, xs, ys, "o-") for layer, (xs, ys) in norms.items()],
                                   "operator norm of each normalized D layer on its input", "operator norm",
                                   os.path.join(folder, "operator_norm.png")))

    lines = [(label, *series(records, key), "o-") for key, label in (
        ("grad_norm_max", "max ||grad_x D|| (lower bound of Lip(D))"),
        ("grad_norm_mean", "mean ||grad_x D||"),
        ("lipschitz_upper_bound", "product of operator norms (upper bound)"))]
    lines = [line for line in lines if line[1]]
    if lines:
        written.append(save_figure(plt, lines, "gradient norm of D", "norm",
                                   os.path.join(folder, "grad_norm.png"), log_y=True))
    return written


def main(argv=None):
    args = parse_args(argv)
    log_path = os.path.join(args.run_dir, "log.jsonl")
    if not os.path.isdir(args.run_dir):
        print(f"error: {args.run_dir}: no such run directory", file=sys.stderr)
        return 2
    if not os.path.isfile(log_path):
        print(f"error: {args.run_dir}: no log.jsonl there", file=sys.stderr)
        return 2
    from npsn.gan.rundir import RunDirError, check_writable_folder, read_log

    folder = args.out or os.path.join(args.run_dir, "plots")
    try:
        check_writable_folder(folder, f"--out {folder}" if args.out else f"the plots' folder {folder}")
    except RunDirError as exc:
        print(f"error: {exc}" + ("" if args.out else "; write them elsewhere with --out DIR"), file=sys.stderr)
        return 2
    try:
        _, records, torn = read_log(log_path)
    except RunDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if torn:
        print(f"note: {log_path}: left out a torn last line (written in part by a crash)", file=sys.stderr)
    if not records:
        print(f"error: {log_path} is empty", file=sys.stderr)
        return 2
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    os.makedirs(folder, exist_ok=True)
    for path in make_plots(plt, records, folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
