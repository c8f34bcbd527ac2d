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
from npsn.gan.rundir import (RunDirError, check_new_run_dir, check_resume_dir, claim_run_dir, how_to_continue,
                             read_config_json, read_log, run_state, stale_temp_files, write_json_atomic)
from npsn.utils.console import flush_at_exit, one_line, say
from npsn.backend.threads import ThreadsError, environment_threads

COMMAND = "python scripts/train_classifier.py"
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
    """``(config, out_dir, checkpoint or None, data path, state)``, everything checked; nothing written.

    ``state`` is the resumed run's :func:`~npsn.gan.rundir.run_state` when it was checked (None for a new run).
    """
    given = {name: getattr(args, name) for name in TRAINING_OPTIONS if getattr(args, name) is not None}
    if args.resume:
        if args.out:
            raise UsageError("--out and --resume exclude each other: a resumed run stays in its own folder")
        if given:
            raise UsageError("--resume continues a run with its own settings; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in given))
        out = args.resume
        has_checkpoint = check_resume_dir(out)
        state = run_state(out)
        checkpoint = None
        if has_checkpoint:
            checkpoint_path = os.path.join(out, "checkpoint.npz")
            try:
                checkpoint = load_checkpoint(checkpoint_path)
            except Exception as exc:
                raise UsageError(f"{checkpoint_path} is damaged ({type(exc).__name__}); restore it from a copy or "
                                 f"start a new run") from None
            if not isinstance(checkpoint[1], dict) or checkpoint[1].get("kind") != CHECKPOINT_KIND:
                raise UsageError(f"{checkpoint_path} is not a classifier checkpoint; --resume takes a folder written "
                                 f"by scripts/train_classifier.py")
            read_log(os.path.join(out, "log.jsonl"))
        config = ClassifierConfig.from_json(read_config_json(out))
        problems = config.problems()
        if problems:
            raise UsageError(f"{out}/config.json: {problems[0]}; correct that file")
        return config, out, checkpoint, args.data or config.data or "data", state
    config = ClassifierConfig(**given)
    problems = config.problems()
    if problems:
        raise UsageError(problems[0])
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
        raise UsageError(f"--batch-size {config.batch_size} is more than the {len(train_data[0])} training images")
    config.data = os.path.abspath(data)
    run = ClassifierRun(config, out)
    if checkpoint is not None:
        try:
            run.restore(*checkpoint, n_items=len(train_data[0]))
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{out}/checkpoint.npz does not fit {out}/config.json ({type(exc).__name__}); "
                             f"restore both from a copy") from None
    return run, (train_data, test_data), out, checkpoint, state


def main(argv=None):
    args = parse_args(argv)
    try:
        run, (train_data, test_data), out, checkpoint, state = prepare(args)
        lock = claim_run_dir(out, "--resume" if args.resume else "--out", state)  # one process writes a run
    except (UsageError, RunDirError, CIFAR10Error, ThreadsError) as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    with lock:
        return write_and_train(args, run, train_data, test_data, out, checkpoint)


def write_and_train(args, run, train_data, test_data, out, checkpoint):
    """Everything is valid and the run directory is this process's: write, train; returns the exit status."""
    config = run.config
    for tmp in stale_temp_files(out):
        os.remove(tmp)
    log_path = os.path.join(out, "log.jsonl")
    if checkpoint is not None:
        # keep the log lines of the epochs the checkpoint holds (a crash may have left one more)
        lines, records, _ = read_log(log_path)
        kept = [line for line, record in zip(lines, records) if record.get("epoch", 0) <= run.epoch]
        with open(log_path, "w") as f:
            f.writelines(kept)
    elif os.path.exists(log_path):  # a run started again: the epochs of its earlier attempt are trained again
        open(log_path, "w").close()
    write_json_atomic(os.path.join(out, "config.json"), config.to_json())
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
