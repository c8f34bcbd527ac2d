"""Train the small CIFAR-10 classifier whose features and predictions scripts/evaluate.py uses.

    python scripts/train_classifier.py --data ../shared/data/cifar-10-python.tar.gz
    python scripts/train_classifier.py --resume runs/classifier

Writes --out (default runs/classifier, where scripts/evaluate.py looks by default): config.json,
log.jsonl (one line per epoch: train loss and accuracy, test accuracy, seconds) and
checkpoint.npz (after every epoch). The network and recipe are described in
npsn/eval/classifier.py and npsn/eval/classifier_training.py (SGD Nesterov, one-cycle learning
rate, random crops and flips; 8 epochs reached 82% test accuracy in 41 minutes on one shared CPU core).

A new run never overwrites anything: --out must be a new or an empty directory. --resume continues
a run from its last complete epoch with the run's own settings (only --data may be given again,
when the data has moved). Every option is checked before the data is loaded or anything is
written; a bad one is a one-line error (exit status 2). Ctrl-C stops at once; the last epoch's
checkpoint stays.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import os
import sys

from npsn.data.cifar10 import CIFAR10Error, load_cifar10
from npsn.eval.classifier import CHECKPOINT_KIND, DEFAULT_CLASSIFIER_DIR, DEFAULT_WIDTHS
from npsn.eval.classifier_training import ClassifierConfig, ClassifierRun, train
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.rundir import (RunDirError, check_new_run_dir, check_resume_dir, read_config_json, read_log,
                             stale_temp_files, write_json_atomic)

DEFAULTS = ClassifierConfig()
TRAINING_OPTIONS = ("epochs", "batch_size", "lr", "warmup", "momentum", "weight_decay", "widths", "seed")


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def widths(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated integers, e.g. 32,64,128") from None
    return values


def parse_args(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="cifar-10-python.tar.gz or its extracted folder (default ./data; on resume the "
                                  "run's recorded location)")
    p.add_argument("--out", help=f"a new or empty run directory (default {DEFAULT_CLASSIFIER_DIR})")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last complete epoch")
    # training options default to None: "the default (or, on resume, the run's) value"
    p.add_argument("--epochs", type=int, help=f"passes over the 50,000 training images (default {DEFAULTS.epochs})")
    p.add_argument("--batch-size", type=int, help=f"images per SGD step (default {DEFAULTS.batch_size})")
    p.add_argument("--lr", type=float, help=f"the one-cycle peak learning rate (default {DEFAULTS.lr})")
    p.add_argument("--warmup", type=float, help=f"fraction of the steps rising to the peak (default {DEFAULTS.warmup})")
    p.add_argument("--momentum", type=float, help=f"Nesterov momentum (default {DEFAULTS.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"L2 penalty (default {DEFAULTS.weight_decay})")
    p.add_argument("--widths", type=widths, help="channels of the three stages (default "
                                                 + ",".join(map(str, DEFAULT_WIDTHS)) + ")")
    p.add_argument("--seed", type=int, help=f"seeds the weights, the minibatches and the augmentation (default {DEFAULTS.seed})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class UsageError(Exception):
    pass


def build(args):
    """``(config, out_dir, checkpoint or None, data path)``, everything checked; nothing written."""
    given = {name: getattr(args, name) for name in TRAINING_OPTIONS if getattr(args, name) is not None}
    if args.resume:
        if args.out:
            raise UsageError("--out and --resume exclude each other: a resumed run stays in its own folder")
        if given:
            raise UsageError("--resume continues a run with its own settings; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in given))
        out = args.resume
        check_resume_dir(out)
        stored = read_config_json(out)
        config = ClassifierConfig.from_json(stored)
        checkpoint_path = os.path.join(out, "checkpoint.npz")
        try:
            arrays, meta = load_checkpoint(checkpoint_path)
        except Exception as exc:
            raise UsageError(f"{checkpoint_path} is damaged ({type(exc).__name__}); restore it from a copy or "
                             f"start a new run") from None
        if not isinstance(meta, dict) or meta.get("kind") != CHECKPOINT_KIND:
            raise UsageError(f"{checkpoint_path} is not a classifier checkpoint; --resume takes a folder written "
                             f"by scripts/train_classifier.py")
        read_log(os.path.join(out, "log.jsonl"))
        data = args.data or stored.get("data") or "data"
        return config, out, (arrays, meta), data
    config = ClassifierConfig(**given)
    problems = config.problems()
    if problems:
        raise UsageError(problems[0])
    out = args.out or DEFAULT_CLASSIFIER_DIR
    check_new_run_dir(out)
    return config, out, None, args.data or "data"


def main(argv=None):
    args = parse_args(argv)
    try:
        config, out, checkpoint, data = build(args)
        train_data = load_cifar10(data, "train")
        test_data = load_cifar10(data, "test")
        if config.batch_size > len(train_data[0]):
            raise UsageError(f"--batch-size {config.batch_size} is more than the {len(train_data[0])} training images")
        config.data = os.path.abspath(data)
        run = ClassifierRun(config, out)
        if checkpoint is not None:
            try:
                run.restore(*checkpoint, n_items=len(train_data[0]))
            except (KeyError, ValueError, TypeError) as exc:
                raise UsageError(f"{out}/checkpoint.npz does not fit {out}/config.json ({type(exc).__name__}); "
                                 f"restore both from a copy") from None
    except (UsageError, RunDirError, CIFAR10Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # everything is valid: write
    os.makedirs(out, exist_ok=True)
    for tmp in stale_temp_files(out):
        os.remove(tmp)
    if checkpoint is not None:
        # keep the log lines of the epochs the checkpoint holds (a crash may have left one more)
        lines, records, _ = read_log(os.path.join(out, "log.jsonl"))
        kept = [line for line, record in zip(lines, records) if record.get("epoch", 0) <= run.epoch]
        with open(os.path.join(out, "log.jsonl"), "w") as f:
            f.writelines(kept)
    write_json_atomic(os.path.join(out, "config.json"), config.to_json())
    print(f"npsn classifier: {'resuming at epoch ' + str(run.epoch) if checkpoint else 'training'} in {out}; "
          f"data {config.data}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in config.to_json().items() if k != "data"))
    try:
        accuracy = train(run, train_data, test_data, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {out}/checkpoint.npz holds epoch {run.epoch}. Continue with: "
              f"python scripts/train_classifier.py --resume {out}", file=sys.stderr)
        return 130
    if accuracy is None:
        print(f"{out} has already trained all {config.epochs} epochs")
    else:
        print(f"done: test accuracy {accuracy:.4f} after {run.epoch} epochs ({run.seconds:.0f} s); {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
