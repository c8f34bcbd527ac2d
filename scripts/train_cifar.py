"""Train an SN-GAN on CIFAR-10.

    python scripts/train_cifar.py --device cpu --data ../shared/data/cifar-10-python.tar.gz
    python scripts/train_cifar.py --device gpu --preset sngan-projection-resnet --download
    python scripts/train_cifar.py --resume runs/cnn-20261123-120000
    python scripts/train_cifar.py --conditional --data ../shared/data/cifar-10-python.tar.gz
    python scripts/train_cifar.py --device gpu --preset sngan-projection-resnet-conditional --download

--preset names the configuration a run reproduces (default cnn; the presets and their sources are
listed at the end of this help, and the run's config.json records "preset" and "source"). The
preset gives every hyperparameter; any option given on the command line overrides
it (the settings the run uses are printed at start). Every option is checked before the data is
loaded or anything is written; a bad one is a one-line error (exit status 2).

A new run never overwrites anything: --out must be a new or an empty directory. A resumed run
reads its config.json (which records the data's absolute path) and checkpoint, checks both,
and continues; of its options only these may change on resume: --iterations, --lr, --lr-decay,
--device, --log-every, --sample-every, --checkpoint-every, --checkpoint-minutes, --eval-every,
--eval-images (and --data, when the data has moved). Any other option that differs from the
run's is refused (among them --preset, --model, --batch-size, --g-batch-size, --z-dist, --pixels,
--d-final-bias, --conditional, --d-norm, --loss, --weight-clip and --setting: they fix the architecture,
the random streams or what an update computes).

The paper's competing discriminators (cnn and sndcgan): --d-norm none|bn|ln|wn|ortho, --loss wgan-gp|gan-gp
(the gradient penalty), --weight-clip C; --setting A..F sets Table 1's lr, betas and n_dis (see the README).

--conditional trains a class-conditional GAN on CIFAR-10's 10 classes (any --model; conditional
BatchNorm in G, a projection discriminator): D sees each real image's label, G's labels are drawn
uniformly, and each sample grid has one row per class with the class name (from batches.meta)
written on its left. The preset sngan-projection-resnet-conditional is the authors' conditional run.

Checkpoints: every --checkpoint-every iterations, every --checkpoint-minutes (default 10), at the
end and on Ctrl-C/SIGTERM; a first sample grid at iteration 1. A failed write (e.g. a full disk)
stops training with the last good checkpoint named; --resume continues from it.

Data-parallel: `mpiexec -n R python scripts/train_cifar.py --distributed ...` trains on R ranks (one
device each; --batch-size stays the global batch and must be divisible by R); rank 0 writes the run.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import dataclasses
import os
import signal
import sys
import time

from npsn import backend
from npsn.data.cifar10 import CIFAR10Error, download_cifar10, load_cifar10, load_label_names
from npsn.gan.cnn import D_NORMS
from npsn.gan.models import MODELS, Z_DISTRIBUTIONS
from npsn.gan.rundir import (RunDirError, check_new_run_dir, check_resume_dir, read_checkpoint, read_config_json,
                             read_log, stale_temp_files, write_json_atomic)
from npsn.gan.trainer import (LEGACY_FIELDS, LOSS_CHOICES, LR_DECAYS, PIXEL_MAPPINGS, PRESET_SOURCES, PRESETS,
                              RESUMABLE_OPTIONS, SETTINGS, Trainer, TrainingDiverged, TrainConfig, config_problems,
                              preset_config)
from npsn.nn.spectral_norm import SN_MODES
from npsn.utils.allocator import keep_freed_memory


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (no usage block): '<prog>: error: <message>'."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def presets_help():
    """The epilog of --help: each preset, what it reproduces, and its values."""
    lines = ["presets (each value can be overridden by its option):"]
    for name, values in PRESETS.items():
        lines.append(f"  {name}: {PRESET_SOURCES[name]}")
        lines.append("      " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return "\n".join(lines)


def parse_args(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog=presets_help())
    # Every option defaults to None, meaning "the preset's (or the resumed run's) value".
    p.add_argument("--device", choices=backend.DEVICES, help="cpu (NumPy) or gpu (CuPy)")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="the configuration to reproduce (see the list below); default cnn, or --model's "
                        "legacy preset (cnn, resnet) when only --model is given")
    p.add_argument("--model", choices=MODELS,
                   help="the architecture, overriding the preset's: cnn (Table 3), resnet (Table 4), "
                        "sndcgan (chainer-gan-lib)")
    p.add_argument("--loss", choices=LOSS_CHOICES,
                   help="D's loss on logits, or wgan-gp / gan-gp: wasserstein / nonsaturating with the gradient penalty")
    p.add_argument("--iterations", type=int, help="generator updates")
    p.add_argument("--batch-size", type=int, help="real (and generated) images per D update")
    p.add_argument("--g-batch-size", type=int,
                   help="generated images per G update, also G's BN batch (default: the preset's; 0 = --batch-size)")
    p.add_argument("--z-dist", choices=Z_DISTRIBUTIONS, help="z ~ N(0, I) (normal) or U(-1, 1) (uniform)")
    p.add_argument("--pixels", choices=PIXEL_MAPPINGS,
                   help="real images as p/127.5-1 (unit) or p/128-1+U(0,1/128) noise (dequantized, sngan_projection)")
    p.add_argument("--d-final-bias", choices=("yes", "no"), help="a bias on D's final dense layer")
    p.add_argument("--conditional", dest="num_classes", action="store_const", const=10,
                   help="class-conditional on CIFAR-10's 10 classes: conditional BN in G, projection D")
    p.add_argument("--setting", choices=tuple(SETTINGS),
                   help="the paper's Table 1 setting: lr, beta1, beta2 and n_dis (each overridden by its option)")
    p.add_argument("--lr", type=float)
    p.add_argument("--beta1", type=float)
    p.add_argument("--beta2", type=float)
    p.add_argument("--n-dis", type=int, help="discriminator updates per generator update")
    p.add_argument("--lr-decay", choices=LR_DECAYS)
    p.add_argument("--g-ch", type=int, help="generator base width (default: the paper's)")
    p.add_argument("--d-ch", type=int, help="discriminator base width (default: the paper's)")
    p.add_argument("--d-norm", choices=D_NORMS,
                   help="D's normalization (cnn, sndcgan): sn (default), none, or the paper's bn, ln, wn (no gain), "
                        "ortho (orthonormal init and regularization)")
    p.add_argument("--no-sn", dest="d_norm", action="store_const", const="none", help="= --d-norm none")
    p.add_argument("--weight-clip", type=float, metavar="C",
                   help="clip D's layer weights to [-C, C] after each D update (the paper: 0.01); 0: off")
    p.add_argument("--sn-mode", choices=SN_MODES, help="D's conv sigma: matrix (the paper's, default) or operator")
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="cifar-10-python.tar.gz or its extracted folder (default: ./data)")
    p.add_argument("--download", action="store_true", help="download the official archive into --data (or ./data)")
    p.add_argument("--out", help="run directory (default: runs/<preset>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--log-every", type=int)
    p.add_argument("--sample-every", type=int)
    p.add_argument("--checkpoint-every", type=int, help="a checkpoint every N iterations (0: only by time and at the end)")
    p.add_argument("--checkpoint-minutes", type=float,
                   help="also a checkpoint when this many minutes have passed since the last one (default 10; 0: off)")
    p.add_argument("--eval-every", type=int, help="SWD and spectral diagnostics every N iterations (0: off)")
    p.add_argument("--eval-images", type=int, help="real and generated images used for SWD")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks mpiexec starts (mpi4py; see the README)")
    p.add_argument("--local-bn", action="store_true",
                   help="with --distributed: G's BatchNorm uses each rank's own statistics (DDP without SyncBN; "
                        "the result then depends on the number of ranks)")
    args = p.parse_args(argv)
    if args.d_final_bias is not None:
        args.d_final_bias = args.d_final_bias == "yes"
    return args


CONFIG_OPTIONS = [f.name for f in dataclasses.fields(TrainConfig)]


class UsageError(Exception):
    """A bad option, run directory or run file: main prints the message on one line and exits with 2."""


SWITCHES = {"num_classes": "--conditional"}  # config fields set by an option without a value


def flag(name):
    """The command-line option of a config field ("batch_size" -> "--batch-size"; "num_classes" -> "--conditional")."""
    return SWITCHES.get(name, "--" + name.replace("_", "-"))


def fit(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def check_values(config, given, source):
    """UsageError for the first invalid value: named by its option when given, else by ``source``."""
    for name, message in config_problems(config):
        if name in given:
            raise UsageError(f"argument {flag(name)}: {message}")
        raise UsageError(f"{source}: {name} {message}; correct that file, or give {flag(name)}")


def build_config(args):
    """``(config, out_dir, stored)`` from the arguments, every value checked; only the run's files are read.

    ``stored`` is the resumed run's config.json (None for a new run).
    """
    given = {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name, None) is not None}
    if not args.resume:
        preset = given.pop("preset", None)
        if preset is None:  # earlier npsn: --model alone chose its preset
            preset = given["model"] if given.get("model") in PRESETS else "cnn"
        config = preset_config(preset, **given)
        check_values(config, given, "the preset")
        out = args.out or os.path.join("runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_new_run_dir(out)
        return config, out, None

    run_dir = args.resume
    if args.out:
        raise UsageError(f"--out and --resume: a resumed run stays in its directory; give only --resume {run_dir}")
    check_resume_dir(run_dir)
    config_path = os.path.join(run_dir, "config.json")
    stored = read_config_json(run_dir)
    unknown = sorted(set(stored) - set(CONFIG_OPTIONS) - set(LEGACY_FIELDS) - {"data", "source"})
    if unknown:
        raise UsageError(f"{config_path} has unknown settings {', '.join(unknown)} (damaged, or from another "
                         f"version of npsn); correct that file")
    config = TrainConfig.from_dict(stored)
    check_values(config, {}, config_path)
    _, meta = read_checkpoint(os.path.join(run_dir, "checkpoint.npz"))
    for name in CONFIG_OPTIONS:
        if name not in RESUMABLE_OPTIONS and name in meta["config"] and meta["config"][name] != getattr(config, name):
            raise UsageError(f"{config_path} has {name}={getattr(config, name)!r} but the checkpoint was trained "
                             f"with {name}={meta['config'][name]!r}; restore config.json from a copy")
    for name, value in given.items():
        if name not in RESUMABLE_OPTIONS and value != getattr(config, name):
            shown = flag(name) if name in SWITCHES else f"{flag(name)} {value}"
            raise UsageError(f"{shown}: the run in {run_dir} has {name}={getattr(config, name)}, which cannot "
                             f"change on resume (only {', '.join(flag(n) for n in RESUMABLE_OPTIONS)} can); "
                             f"start a new run with --out to change it")
    config = dataclasses.replace(config, **given)
    check_values(config, given, config_path)
    if meta["iteration"] >= config.iterations:
        raise UsageError(f"--resume {run_dir}: the run is already at iteration {meta['iteration']} of "
                         f"{config.iterations}; to train longer give --iterations larger than {meta['iteration']}")
    return config, run_dir, stored


def data_path(args, stored, run_dir):
    """Where the training data is: --data, else the resumed run's recorded location, else ./data."""
    if args.data or args.download or stored is None:
        return args.data or "data"
    recorded = stored.get("data")
    if not recorded:
        raise UsageError(f"{run_dir}/config.json records no data location (a run of an older npsn): "
                         f"give --data PATH")
    if not os.path.exists(recorded):
        raise UsageError(f"the run's data {recorded} (recorded in {run_dir}/config.json) is not there any more: "
                         f"give --data PATH with its new location")
    return recorded


def load_images(args, path, conditional=False):
    """``(training images as uint8 NCHW, their labels, the class names or None, the absolute path they came
    from)``, downloading first if asked; the class names (batches.meta) are read for a conditional run only."""
    if args.download:
        root = path if not path.endswith((".tar.gz", ".tgz")) else os.path.dirname(path) or "."
        path = download_cifar10(root)
    images, labels = load_cifar10(path, "train")
    names = load_label_names(path) if conditional else None
    return images, labels, names, os.path.abspath(path)


def last_good(trainer):
    if trainer.saved_iteration is None:
        return "no checkpoint has been written yet"
    return f"the last good checkpoint is {trainer.checkpoint_path} (iteration {trainer.saved_iteration})"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    comm, stop = None, None
    if args.distributed:
        from npsn.distributed import launch
        from npsn.distributed.trainer import StopRequest

        try:
            comm = launch.start()
        except RuntimeError as exc:  # DistributedError: no mpi4py
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # Ctrl-C and SIGTERM become a stop request that every rank honours after the same iteration.
        stop = StopRequest()
        signal.signal(signal.SIGINT, stop.handler)
        signal.signal(signal.SIGTERM, stop.handler)
        code = train(args, comm, stop)
        comm.barrier()  # every exit that reaches here is one all ranks took together (rank 0 has written)
        return code
    # SIGTERM (a job scheduler, `kill`) stops training like Ctrl-C: with a checkpoint.
    signal.signal(signal.SIGTERM, _interrupt)
    return train(args)


def train(args, comm=None, stop=None):
    """The run: validate, load, build, write, train; returns the exit status.

    With ``comm`` (``--distributed``), every rank validates and the ranks agree (the first
    problem of any rank stops all of them before anything is written); rank 0 alone writes and
    prints; a failure that only some ranks see stops all ranks through MPI Abort.
    """
    root = comm.rank == 0 if comm is not None else _launched_rank() == 0  # mpiexec without --distributed: one line
    say = print if root else (lambda *a, **k: None)
    trainer, written, agreed = None, False, False
    try:
        if comm is None and not args.distributed and _launched_ranks() > 1:
            raise UsageError(f"started as {_launched_ranks()} MPI ranks without --distributed: add --distributed "
                             f"(or run one process)")
        if args.local_bn and comm is None:
            raise UsageError("--local-bn is for --distributed runs")
        if args.download and comm is not None:
            raise UsageError("--download with --distributed would download once per rank: download first with "
                             "python -c \"from npsn.data.cifar10 import download_cifar10; download_cifar10('data')\", "
                             "then give --data data")
        # 1. everything that can be checked without the data; nothing is written
        config, out_dir, stored = build_config(args)
        if args.resume:
            read_log(os.path.join(out_dir, "log.jsonl"))  # a damaged line other than a torn last one stops here
        backend.check_device(config.device)
        path = data_path(args, stored, out_dir)
        # 2. the data, and the run's state built (and, on resume, its checkpoint loaded and checked)
        images, labels, names, data = load_images(args, path, conditional=bool(config.num_classes))
        if config.num_classes and config.num_classes != len(names):
            raise UsageError(f"the run has {config.num_classes} classes but {data} names {len(names)}")
        if config.batch_size > len(images):
            raise UsageError(f"argument --batch-size: {config.batch_size} is more than the {len(images)} "
                             f"training images")
        if comm is not None:
            for name in ("batch_size", "g_batch_size"):
                if getattr(config, name) % comm.size:
                    raise UsageError(f"argument {flag(name)}: {getattr(config, name)} is the global batch and must "
                                     f"be divisible by the {comm.size} ranks; give a multiple of {comm.size}")
            from npsn.distributed.trainer import unsupported
            if unsupported(config):
                raise UsageError(unsupported(config))
            placed = launch_place(config.device, comm)
        # Large im2col temporaries: keep freed memory for reuse instead of page-faulting it back each step.
        keep_freed_memory()
        try:
            if comm is None:
                trainer = Trainer(config, images, out_dir, resume=bool(args.resume), labels=labels, class_names=names)
            else:
                from npsn.distributed.trainer import DistributedTrainer

                trainer = DistributedTrainer(config, images, out_dir, comm, resume=bool(args.resume),
                                             sync_bn=not args.local_bn, stop=stop, labels=labels, class_names=names)
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{os.path.join(out_dir, 'checkpoint.npz')} does not fit the run's config.json "
                             f"({type(exc).__name__}: {fit(exc)}); restore both from a copy") from None
        if config.eval_every and root:
            from npsn.eval.evaluation import make_evaluator

            trainer.evaluator = make_evaluator(config, images, labels)
        if comm is not None:  # every rank has validated: the first problem of any rank stops them all
            agreed = True
            problem = _agree(comm, None)
            if problem:
                raise UsageError(problem)
        # 3. everything is valid: write
        written = True
        source = PRESET_SOURCES.get(config.preset, "no preset")
        if root:
            os.makedirs(out_dir, exist_ok=True)
            for tmp in stale_temp_files(out_dir):
                os.remove(tmp)
                print(f"note: removed {tmp} (a partial checkpoint left by a process killed during a save)",
                      file=sys.stderr)
            write_json_atomic(os.path.join(out_dir, "config.json"), dict(dataclasses.asdict(config), data=data,
                                                                         source=source))
        kind = f"class-conditional ({config.num_classes} classes) " if config.num_classes else ""
        say(f"npsn: {'resuming' if args.resume else 'training'} {kind}{config.model} on {len(images)} CIFAR-10 "
            f"images ({data}), device {config.device}, run dir {out_dir}")
        if comm is not None:
            say(f"data-parallel: {comm.name}, global batch {config.batch_size} = {comm.size} x "
                f"{config.batch_size // comm.size}, G's BatchNorm {'per rank' if args.local_bn else 'synchronized'}; "
                f"rank 0: {placed}")
        say(f"preset {config.preset or '(none)'}: {source}")
        say("settings: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))
        if args.resume:
            say(f"resuming from iteration {trainer.iteration} of {config.iterations}")
        loss_d, loss_g = trainer.run()
    except (UsageError, RunDirError, CIFAR10Error, backend.DeviceError) as exc:
        message = str(exc)
        if comm is not None and not agreed:
            message = _agree(comm, message)
        if root:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # with --distributed: RanksStopped, raised on every rank after the same iteration
        if not root:
            pass
        elif trainer is None or not written:
            print("\ninterrupted before training started; nothing was written", file=sys.stderr)
        elif trainer.saved_iteration == trainer.iteration:
            print(f"\ninterrupted at iteration {trainer.iteration}; checkpoint written. "
                  f"Continue with: {_command(comm)} --resume {out_dir}", file=sys.stderr)
        else:
            print(f"\ninterrupted at iteration {trainer.iteration} before its checkpoint was complete; "
                  f"{last_good(trainer)}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:  # with --distributed: the global losses and parameters, so on every rank
        if root:
            print(f"\nerror: training stopped: {exc}. {last_good(trainer)[0].upper()}{last_good(trainer)[1:]}",
                  file=sys.stderr)
        return 1
    except MemoryError:
        print(f"\nerror: {_rank(comm)}out of memory with --batch-size {config.batch_size} ({config.model}); "
              f"try a smaller --batch-size" + (f"; {last_good(trainer)}" if trainer else ""), file=sys.stderr)
        return _stop_all(comm, 1)
    except OSError as exc:
        where = f" at iteration {trainer.iteration}" if trainer else ""
        reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else fit(exc)
        print(f"\nerror: {_rank(comm)}a write failed{where} ({reason}); training stopped, "
              f"{last_good(trainer) if trainer else ''}{'; ' if trainer else ''}free space (or fix the folder), "
              f"then continue with: {_command(comm)} --resume {out_dir}", file=sys.stderr)
        return _stop_all(comm, 1)
    say(f"done: iteration {trainer.iteration}, loss_d {loss_d:.4f}, loss_g {loss_g:.4f}; "
        f"samples and checkpoint in {out_dir}")
    return 0


# ---------------------------------------------------------------- --distributed (npsn.distributed.launch)

def _launched_ranks():
    from npsn.distributed.launch import launcher_size

    return launcher_size()


def _launched_rank():
    from npsn.distributed.launch import launcher_rank

    return launcher_rank()


def launch_place(device, comm):
    from npsn.distributed.launch import place_rank

    return place_rank(device, comm)


def _agree(comm, problem):
    from npsn.distributed.launch import agree

    return agree(comm, problem)


def _rank(comm):
    return "" if comm is None else f"rank {comm.rank}: "


def _command(comm):
    prefix = "" if comm is None else f"mpiexec -n {comm.size} "
    return f"{prefix}python scripts/train_cifar.py" + (" --distributed" if comm is not None else "")


def _stop_all(comm, code):
    """``code``; with --distributed, a failure other ranks did not see: stop them all now (MPI Abort)."""
    if comm is not None:
        print(f"error: {_rank(comm)}stopping all {comm.size} ranks", file=sys.stderr)
        comm.abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
