"""Train an SN-GAN on CIFAR-10.

    python scripts/train_cifar.py --device cpu --data ../shared/data/cifar-10-python.tar.gz
    python scripts/train_cifar.py --device gpu --model resnet --download
    python scripts/train_cifar.py --resume runs/cnn-20261123-120000

The model's preset (printed at start) gives every hyperparameter; any option given on the
command line overrides it. A resumed run reads its config.json and continues from its
checkpoint (options given explicitly, e.g. a larger --iterations, still override).
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

from npsn import backend
from npsn.data.cifar10 import CIFAR10Error, download_cifar10, load_cifar10
from npsn.gan.losses import LOSSES
from npsn.gan.models import MODELS
from npsn.gan.trainer import LR_DECAYS, PRESETS, Trainer, TrainingDiverged, TrainConfig, preset_config
from npsn.nn.spectral_norm import SN_MODES
from npsn.utils.allocator import keep_freed_memory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every option defaults to None, meaning "the preset's (or the resumed run's) value".
    p.add_argument("--device", choices=backend.DEVICES, help="cpu (NumPy) or gpu (CuPy)")
    p.add_argument("--model", choices=MODELS, help="cnn (Table 3) or resnet (Table 4); default cnn")
    p.add_argument("--loss", choices=tuple(LOSSES))
    p.add_argument("--iterations", type=int, help="generator updates")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--beta1", type=float)
    p.add_argument("--beta2", type=float)
    p.add_argument("--n-dis", type=int, help="discriminator updates per generator update")
    p.add_argument("--lr-decay", choices=LR_DECAYS)
    p.add_argument("--g-ch", type=int, help="generator base width (default: the paper's)")
    p.add_argument("--d-ch", type=int, help="discriminator base width (default: the paper's)")
    p.add_argument("--no-sn", dest="sn", action="store_const", const=False, help="no spectral normalization in D")
    p.add_argument("--sn-mode", choices=SN_MODES, help="D's conv sigma: matrix (the paper's, default) or operator")
    p.add_argument("--seed", type=int)
    p.add_argument("--data", help="cifar-10-python.tar.gz or its extracted folder (default: ./data)")
    p.add_argument("--download", action="store_true", help="download the official archive into --data (or ./data)")
    p.add_argument("--out", help="run directory (default: runs/<model>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--log-every", type=int)
    p.add_argument("--sample-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--eval-every", type=int, help="SWD and spectral diagnostics every N iterations (0: off)")
    p.add_argument("--eval-images", type=int, help="real and generated images used for SWD")
    return p.parse_args(argv)


CONFIG_OPTIONS = [f.name for f in dataclasses.fields(TrainConfig)]


def build_config(args):
    """(config, out_dir) from the arguments: the preset or the resumed run's config, then explicit options."""
    given = {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name, None) is not None}
    if args.resume:
        path = os.path.join(args.resume, "config.json")
        if not os.path.exists(os.path.join(args.resume, "checkpoint.npz")):
            raise SystemExit(f"error: --resume {args.resume}: no checkpoint.npz there")
        with open(path) as f:
            values = json.load(f)
        values.update(given)
        return TrainConfig.from_dict(values), args.resume
    model = given.pop("model", "cnn")
    config = preset_config(model, **given)
    out = args.out or os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    return config, out


def load_images(args):
    """The training split as uint8 NCHW, downloading first if asked."""
    path = args.data or "data"
    if args.download:
        root = path if not path.endswith((".tar.gz", ".tgz")) else os.path.dirname(path) or "."
        path = download_cifar10(root)
    images, _ = load_cifar10(path, "train")
    return images


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    # SIGTERM (a job scheduler, `kill`) stops training like Ctrl-C: with a checkpoint.
    signal.signal(signal.SIGTERM, _interrupt)
    config, out_dir = build_config(args)
    try:
        backend.check_device(config.device)  # before loading any data
    except backend.DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        images = load_images(args)
    except CIFAR10Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    preset = PRESETS[config.model]
    # Large im2col temporaries: keep freed memory for reuse instead of page-faulting it back each step.
    keep_freed_memory()
    print(f"npsn: training {config.model} on {len(images)} CIFAR-10 images, device {config.device}, run dir {out_dir}")
    print(f"preset {config.model}: " + ", ".join(f"{k}={v}" for k, v in preset.items()))
    print("config: " + json.dumps(dataclasses.asdict(config)))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)

    trainer = Trainer(config, images, out_dir, resume=bool(args.resume))
    if args.resume:
        print(f"resuming from iteration {trainer.iteration}")
    if config.eval_every:
        from npsn.eval.evaluation import make_evaluator

        trainer.evaluator = make_evaluator(config, images)
    try:
        loss_d, loss_g = trainer.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted at iteration {trainer.iteration}; checkpoint written. "
              f"Continue with: python scripts/train_cifar.py --resume {out_dir}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"\nerror: training stopped: {exc}. The last good checkpoint is kept in {trainer.checkpoint_path}",
              file=sys.stderr)
        return 1
    print(f"done: iteration {trainer.iteration}, loss_d {loss_d:.4f}, loss_g {loss_g:.4f}; "
          f"samples and checkpoint in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
