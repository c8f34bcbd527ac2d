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
when the data has moved); a run that stopped before its first epoch ended starts again from
epoch 0 with its settings. One process trains a run: a second one on the same folder is refused.
Every option is checked before the data is loaded or anything is written; a bad one is a
one-line error (exit status 2). Ctrl-C stops at once; the last epoch's checkpoint stays.
"""
import preamble  # noqa: F401  (before NumPy: see scripts/preamble.py)

import argparse
import os
import sys

from npsn.data.cifar10 import CIFAR10Error, load_cifar10
from npsn.eval.classifier import CHECKPOINT_KIND, DEFAULT_CLASSIFIER_DIR, DEFAULT_WIDTHS
from npsn.eval.classifier_training import ClassifierConfig, ClassifierRun, train
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.run import RunError
from npsn.gan.rundir import (RunDirError, check_new_run_dir, cut_log, how_to_continue, read_log, recorded_run,
                             start_writing)
from npsn.utils.console import OneLineParser, flush_at_exit, notice, one_line, say
from npsn.backend.threads import ThreadsError, environment_threads

COMMAND = "python scripts/train_classifier.py"
DEFAULTS = ClassifierConfig()
TRAINING_OPTIONS = ("epochs", "batch_size", "lr", "warmup", "momentum", "weight_decay", "widths", "seed")


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


def build(args):
    """``(config, out_dir, checkpoint or None, data path, state)``, everything checked; nothing written.

    ``state`` is the resumed run's :func:`~npsn.gan.rundir.run_state` when it was checked (None for a new run).
    """
    given = {name: getattr(args, name) for name in TRAINING_OPTIONS if getattr(args, name) is not None}
    if args.resume:
        if args.out:
            raise RunError("--out and --resume exclude each other: a resumed run stays in its own folder")
        if given:
            raise RunError("--resume continues a run with its own settings; drop "
                           + ", ".join("--" + k.replace("_", "-") for k in given))
        out = args.resume
        recorded = recorded_run(out)
        checkpoint = None
        if recorded.has_checkpoint:
            checkpoint_path = os.path.join(out, "checkpoint.npz")
            try:
                checkpoint = load_checkpoint(checkpoint_path)
            except Exception as exc:
                raise RunError(f"{checkpoint_path} is damaged ({type(exc).__name__}); restore it from a copy or "
                               f"start a new run") from None
            if not isinstance(checkpoint[1], dict) or checkpoint[1].get("kind") != CHECKPOINT_KIND:
                raise RunError(f"{checkpoint_path} is not a classifier checkpoint; --resume takes a folder written "
                               f"by scripts/train_classifier.py")
            read_log(os.path.join(out, "log.jsonl"))
        config = ClassifierConfig.from_json(recorded.values)
        problems = config.problems()
        if problems:
            raise RunError(f"{out}/config.json: {problems[0]}; correct that file")
        return config, out, checkpoint, args.data or config.data or "data", recorded.state
    config = ClassifierConfig(**given)
    problems = config.problems()
    if problems:
        raise RunError(problems[0])
    out = args.out or DEFAULT_CLASSIFIER_DIR
    check_new_run_dir(out)
    return config, out, None, args.data or "data", None


def prepare(args):
    """``(run, data, out, checkpoint, state)``: the options, the run and the data checked and loaded, the run
    restored from its checkpoint; nothing written."""
    environment_threads()
    config, out, checkpoint, data, state = build(args)
    train_data = load_cifar10(data, "train")
    test_data = load_cifar10(data, "test")
    if config.batch_size > len(train_data[0]):
        raise RunError(f"--batch-size {config.batch_size} is more than the {len(train_data[0])} training images")
    config.data = os.path.abspath(data)
    run = ClassifierRun(config, out)
    if checkpoint is not None:
        try:
            run.restore(*checkpoint, n_items=len(train_data[0]))
        except (KeyError, ValueError, TypeError) as exc:
            raise RunError(f"{out}/checkpoint.npz does not fit {out}/config.json ({type(exc).__name__}); "
                           f"restore both from a copy") from None
    return run, (train_data, test_data), out, checkpoint, state


def main(argv=None):
    args = parse_args(argv)
    try:
        run, (train_data, test_data), out, checkpoint, state = prepare(args)
        # one process writes a run: take it, then write its config.json
        lock = start_writing(out, "--resume" if args.resume else "--out", state, run.config.to_json(), notice)
    except (RunError, RunDirError, CIFAR10Error, ThreadsError) as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    with lock:
        return write_and_train(args, run, train_data, test_data, out, checkpoint)


def write_and_train(args, run, train_data, test_data, out, checkpoint):
    """The run directory is this process's and its config.json written: train; returns the exit status."""
    config = run.config
    # the log lines of the epochs the checkpoint holds (a crash may have left one more); none at epoch 0
    cut_log(os.path.join(out, "log.jsonl"), run.epoch, key="epoch", notice=notice)
    if checkpoint:
        started = f"resuming at epoch {run.epoch}"
    elif args.resume:
        started = "no checkpoint (the run stopped before its first epoch ended): starting it again from epoch 0"
    else:
        started = "training"
    say(f"npsn classifier: {started} in {out}; data {config.data}")
    say("settings: " + ", ".join(f"{k}={v}" for k, v in config.to_json().items() if k != "data"))
    try:
        accuracy = train(run, train_data, test_data, log=say, progress=not args.no_progress)
    except KeyboardInterrupt:
        held = f"{out}/checkpoint.npz holds epoch {run.epoch}" if run.epoch else "no epoch was complete"
        say(f"\ninterrupted; {held}; {how_to_continue(out, COMMAND)}", file=sys.stderr)
        return 130
    except OSError as exc:
        say(f"\nerror: a write failed ({one_line(exc)}); training stopped; free space (or fix the folder), then "
            f"{how_to_continue(out, COMMAND)}", file=sys.stderr)
        return 1
    if accuracy is None:
        say(f"{out} has already trained all {config.epochs} epochs")
    else:
        say(f"done: test accuracy {accuracy:.4f} after {run.epoch} epochs ({run.seconds:.0f} s); {out}")
    return 0


if __name__ == "__main__":
    code = main()
    flush_at_exit()
    sys.exit(code)
