"""Train an SN-GAN on CIFAR-10.

    python scripts/train_cifar.py --device cpu --data ../shared/data/cifar-10-python.tar.gz
    python scripts/train_cifar.py --device gpu --preset sngan-projection-resnet --download
    python scripts/train_cifar.py --resume runs/cnn-20261123-120000
    python scripts/train_cifar.py --conditional --data ../shared/data/cifar-10-python.tar.gz
    python scripts/train_cifar.py --device gpu --preset sngan-projection-resnet-conditional --download

--preset names the configuration a run reproduces (default cnn; listed at the end of this help);
options given override its values. Every option is checked before the data is loaded or anything
is written; a bad one is one line (exit status 2). docs/training.md explains each point below.

Runs: a new run never overwrites anything (--out new or empty; default runs/<preset>-<date>-<time>,
made unique). One process trains a run at a time (a lock). --resume continues from the last
checkpoint (a run without one starts again from iteration 0); on resume only --iterations, --lr,
--lr-decay, --device, --log-every, --sample-every, --checkpoint-every, --checkpoint-minutes,
--eval-every, --eval-images and --data may change. Checkpoints every --checkpoint-minutes (10), at
the end and on Ctrl-C/SIGTERM; a failed write names the last good one. A closed stdout does not
stop training.

--conditional: class-conditional on CIFAR-10's 10 classes (conditional BN in G, projection D; one
grid row per class). The paper's competing discriminators (cnn, sndcgan): --d-norm, --loss
wgan-gp|gan-gp, --weight-clip, --setting A..F (docs/methods.md). Data-parallel: mpiexec -n R python
scripts/train_cifar.py --distributed ... (--batch-size is the global batch; rank 0 writes the run).
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import sys

from npsn import backend
from npsn.distributed.comm import DistributedError
from npsn.distributed.launch import Ranks, launcher_rank, launcher_size
from npsn.eval.evaluation import make_evaluator
from npsn.gan.cnn import D_NORMS
from npsn.gan.models import MODELS, Z_DISTRIBUTIONS
from npsn.gan.run import CONFIG_FIELDS, OneProcess, Run, RunError, RunFailed, RunInterrupted
from npsn.gan.trainer import LOSS_CHOICES, LR_DECAYS, PIXEL_MAPPINGS, PRESETS, SETTINGS, presets_help
from npsn.nn.spectral_norm import SN_MODES
from npsn.utils.console import OneLineParser, flush_at_exit, say


def parse_args(argv=None):
    """The options: each setting's defaults to None, "the preset's (or the resumed run's) value"."""
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog=presets_help())
    p.add_argument("--device", choices=backend.DEVICES, help="cpu (NumPy) or gpu (CuPy)")
    p.add_argument("--preset", choices=tuple(PRESETS), help="the configuration to reproduce (see the list below); "
                   "default cnn, or --model's legacy preset (cnn, resnet) when only --model is given")
    p.add_argument("--model", choices=MODELS, help="the architecture, overriding the preset's: cnn (Table 3), "
                   "resnet (Table 4), sndcgan (chainer-gan-lib)")
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
    p.add_argument("--out", help="run directory (default: runs/<preset>-<date>-<time>, made unique)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (from iteration 0 when it has none)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--sample-every", type=int)
    p.add_argument("--checkpoint-every", type=int, help="a checkpoint every N iterations (0: only by time and at the end)")
    p.add_argument("--checkpoint-minutes", type=float,
                   help="also a checkpoint when this many minutes have passed since the last one (default 10; 0: off)")
    p.add_argument("--eval-every", type=int, help="SWD and spectral diagnostics every N iterations (0: off)")
    p.add_argument("--eval-images", type=int, help="real and generated images used for SWD")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks mpiexec starts (mpi4py; see the README)")
    p.add_argument("--local-bn", action="store_true", help="with --distributed: G's BatchNorm uses each rank's own "
                   "statistics (DDP without SyncBN; the result then depends on the number of ranks)")
    args = p.parse_args(argv)
    if args.d_final_bias is not None:
        args.d_final_bias = args.d_final_bias == "yes"
    return args


def command_line_problem(args):
    """What the command line asks that no run can do, in one line (None when nothing)."""
    if not args.distributed and launcher_size() > 1:
        return f"started as {launcher_size()} MPI ranks without --distributed: add --distributed (or run one process)"
    if args.local_bn and not args.distributed:
        return "--local-bn is for --distributed runs"
    if args.download and args.distributed:
        return ("--download with --distributed would download once per rank: download first with python -c "
                "\"from npsn.data.cifar10 import download_cifar10; download_cifar10('data')\", then give --data data")
    if args.resume and args.out:
        return f"--out and --resume: a resumed run stays in its directory; give only --resume {args.resume}"
    return None


def main(argv=None):
    args = parse_args(argv)
    problem = command_line_problem(args)
    if problem:
        if launcher_rank() == 0:  # started by mpiexec: one line, not one per rank
            say(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        processes = Ranks.start(sync_bn=not args.local_bn) if args.distributed else OneProcess()
    except DistributedError as exc:  # no mpi4py
        say(f"error: {exc}", file=sys.stderr)
        return 2
    processes.catch_signals()  # SIGTERM (and with --distributed, Ctrl-C) stops training with a checkpoint
    code = train(args, processes)
    processes.barrier()  # every exit that reaches here is one all ranks took together (rank 0 has written)
    return code


def train(args, processes):
    """Open the run (npsn.gan.run), train it, and print; returns the exit status. Rank 0 alone prints, but for
    a failure only its own rank saw, which stops all ranks."""
    show = say if processes.root else (lambda *a, **k: None)
    settings = {name: getattr(args, name, None) for name in CONFIG_FIELDS}
    where = dict(data=args.data, download=args.download, processes=processes, make_evaluator=make_evaluator)
    try:
        run = Run.resume(args.resume, settings, **where) if args.resume else Run.create(settings, args.out, **where)
        with run:
            for line in run.describe():
                show(line)
            loss_d, loss_g = run.train()
    except RunError as exc:
        show(f"error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        show(f"\n{exc}", file=sys.stderr)
        return 130
    except RunFailed as exc:  # local: only this rank saw it (out of memory, a failed write), and it stops all ranks
        (say if exc.local else show)(f"\nerror: {exc}", file=sys.stderr)
        return processes.stop_all(1) if exc.local else 1
    show(f"done: iteration {run.trainer.iteration}, loss_d {loss_d:.4f}, loss_g {loss_g:.4f}; "
         f"samples and checkpoint in {run.out_dir}")
    return 0


if __name__ == "__main__":
    code = main()
    flush_at_exit()
    sys.exit(code)
