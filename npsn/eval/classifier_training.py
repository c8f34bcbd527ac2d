"""Training the CIFAR-10 classifier of :mod:`npsn.eval.classifier`: configuration, augmentation, schedule, loop.

``scripts/train_classifier.py`` parses its options into a :class:`ClassifierConfig` and calls
:func:`train`. The recipe is the usual short one for a small BatchNorm network:

* SGD with Nesterov momentum 0.9 and weight decay 5e-4, batch 128;
* a one-cycle learning rate (:func:`one_cycle_lr`): linear from lr/10 up to lr over the first
  ``warmup`` fraction of the steps, then linear down to 0 at the last step;
* augmentation (:func:`augment`): a random 32x32 crop of the image zero-padded by 4 pixels and a
  horizontal flip with probability 1/2, drawn from a seeded generator whose state is checkpointed;
* after each epoch: the accuracy on the 10,000 test images (eval mode), one JSON line in
  ``log.jsonl``, and the checkpoint ``checkpoint.npz`` (model, optimizer, minibatch stream and
  augmentation generator), so ``--resume`` continues exactly where the last epoch ended.

Training runs on the host (NumPy); the trained classifier runs on either device
(:func:`npsn.eval.classifier.load_classifier` takes the device).

Invariant of a run folder between epochs: ``checkpoint.npz`` holds the state after
``meta["epoch"]`` complete epochs and ``log.jsonl`` one line per such epoch.
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

from npsn.data.cifar10 import MinibatchStream
from npsn.data.pixels import pixels_to_unit
from npsn.eval.classifier import (CHECKPOINT_KIND, DEFAULT_WIDTHS, NUM_CLASSES, Classifier, cross_entropy, is_count,
                                  valid_widths)
from npsn.gan.checkpoint import flatten, save_checkpoint, unflatten
from npsn.optim import SGD
from npsn.utils.progress import ProgressBar

PAD = 4  # pixels of zero padding around each image before the random crop


@dataclasses.dataclass
class ClassifierConfig:
    """Everything a classifier training run depends on (saved in its checkpoint and config.json)."""
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1  # the one-cycle peak
    warmup: float = 0.2  # fraction of the steps spent rising to the peak
    momentum: float = 0.9
    weight_decay: float = 5e-4
    widths: tuple = DEFAULT_WIDTHS
    num_classes: int = NUM_CLASSES
    seed: int = 0
    data: str = ""  # the absolute path of the CIFAR-10 archive or folder

    def problems(self):
        """One-line messages for the values that cannot train, of the wrong type or out of range (empty when all
        are valid; a run's config.json is checked with them too)."""
        out = []
        for name in ("epochs", "batch_size"):
            if not is_count(getattr(self, name)):
                out.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)!r}")
        numbers = {name: getattr(self, name) for name in ("lr", "warmup", "momentum", "weight_decay")}
        wrong = [name for name, value in numbers.items() if not _is_number(value)]
        out += [f"--{name.replace('_', '-')} must be a finite number, got {numbers[name]!r}" for name in wrong]
        if "lr" not in wrong and not self.lr > 0:
            out.append("--lr must be positive")
        if "warmup" not in wrong and not 0 <= self.warmup < 1:
            out.append("--warmup must be in [0, 1)")
        if "momentum" not in wrong and not 0 <= self.momentum < 1:
            out.append("--momentum must be in [0, 1)")
        if "weight_decay" not in wrong and not self.weight_decay >= 0:
            out.append("--weight-decay must be at least 0")
        if not valid_widths(self.widths):
            out.append(f"--widths needs three positive channel counts, e.g. 32,64,128 (got {self.widths!r})")
        if not is_count(self.num_classes, 2):
            out.append(f"num_classes must be an integer of at least 2, got {self.num_classes!r}")
        if not is_count(self.seed, 0):
            out.append(f"--seed must be at least 0, got {self.seed!r}")
        if not isinstance(self.data, str):
            out.append(f"data must be the path of the training data, got {self.data!r}")
        return out

    def to_json(self):
        values = dataclasses.asdict(self)
        values["widths"] = list(self.widths)
        return values

    @classmethod
    def from_json(cls, values):
        """The config of a dict (a run's config.json); check it with :meth:`problems`."""
        values = dict(values)
        widths = values.get("widths", DEFAULT_WIDTHS)
        values["widths"] = tuple(widths) if isinstance(widths, list) else widths
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def one_cycle_lr(step, total_steps, peak, warmup):
    """The learning rate of step ``step`` (0-based) of ``total_steps``.

    Rises linearly from peak/10 at step 0 to ``peak`` at step ``warmup * total_steps``, then falls
    linearly to 0 at step ``total_steps``.

    >>> [round(one_cycle_lr(s, 10, 1.0, 0.2), 3) for s in (0, 1, 2, 6, 10)]
    [0.1, 0.55, 1.0, 0.5, 0.0]
    """
    rise = warmup * total_steps
    if step < rise:
        # lr = peak (1/10 + 9/10 step / rise)
        return peak * (0.1 + 0.9 * step / rise)
    # lr = peak (T - step) / (T - rise)
    return peak * max(total_steps - step, 0) / (total_steps - rise)


def augment(images_uint8, rng):
    """Random crops (zero padding ``PAD``) and horizontal flips of a batch (N, C, H, W) of uint8 images.

    For image n, an offset (dy, dx) uniform in 0..2*PAD and a flip bit are drawn from ``rng``
    (in that order: offsets (N, 2), then flips (N,)); the result is
    ``padded[n, :, dy + i, dx + j']`` with j' = j, or W - 1 - j when flipped: one gather on the host.
    """
    n, c, h, w = images_uint8.shape
    offsets = rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    padded = np.pad(images_uint8, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    rows = offsets[:, :1] + np.arange(h)  # (N, H)
    # columns dx + j, or dx + (W - 1 - j) for a flipped image
    cols = offsets[:, 1:] + np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))  # (N, W)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def accuracy(net, images_uint8, labels, chunk=500):
    """The fraction of ``images_uint8`` (N, 3, 32, 32) whose arg-max logit is their label (eval mode)."""
    correct = 0
    for i in range(0, len(images_uint8), chunk):
        logits = net.logits(pixels_to_unit(images_uint8[i:i + chunk], np))
        correct += int((logits.argmax(axis=1) == labels[i:i + chunk]).sum())
    return correct / len(images_uint8)


class ClassifierRun:
    """A classifier training run: the model, its optimizer and random streams, and where it is saved.

    Invariant: ``epoch`` complete epochs have been trained; ``stream`` and ``augment_rng`` are
    where the next epoch starts.
    """

    def __init__(self, config, out):
        self.config, self.out = config, out
        self.net = Classifier(config.widths, config.num_classes, rng=np.random.default_rng([config.seed, 0]))
        self.optimizer = SGD(list(self.net.parameters()), lr=config.lr, momentum=config.momentum, nesterov=True,
                             weight_decay=config.weight_decay)
        self.augment_rng = np.random.default_rng([config.seed, 1])
        self.stream = None  # made by train() once the data's size is known
        self.epoch = 0
        self.seconds = 0.0  # training time so far, summed over sessions

    def checkpoint_arrays(self):
        arrays = flatten("model", self.net.state_dict())
        arrays.update(flatten("opt", self.optimizer.state_dict()))
        arrays.update(flatten("stream", self.stream.state_dict()))
        return arrays

    def save(self, test_accuracy):
        meta = {"kind": CHECKPOINT_KIND, "epoch": self.epoch, "iteration": self.epoch * self.stream.batches_per_epoch,
                "config": self.config.to_json(), "augment_state": self.augment_rng.bit_generator.state,
                "test_accuracy": test_accuracy, "seconds": self.seconds}
        save_checkpoint(os.path.join(self.out, "checkpoint.npz"), self.checkpoint_arrays(), meta)

    def restore(self, arrays, meta, n_items):
        self.stream = MinibatchStream(n_items, self.config.batch_size, self.config.seed)
        self.net.load_state_dict(unflatten("model", arrays))
        self.optimizer.load_state_dict({k: (v.item() if v.ndim == 0 else v) for k, v in unflatten("opt", arrays).items()})
        self.stream.load_state_dict(unflatten("stream", arrays))
        self.augment_rng.bit_generator.state = meta["augment_state"]
        self.epoch, self.seconds = int(meta["epoch"]), float(meta.get("seconds", 0.0))


def train(run, train_data, test_data, log=print, progress=True):
    """Train ``run`` from its current epoch to ``run.config.epochs``; after each epoch test, log and save.

    Args:
        run: a :class:`ClassifierRun` (new, or restored with :meth:`ClassifierRun.restore`).
        train_data, test_data: ``(images uint8 (N, 3, 32, 32), labels (N,))``.
        log: where the per-epoch line goes.
    Returns:
        the last epoch's test accuracy (None when there was nothing left to train).
    """
    config = run.config
    images, labels = train_data
    if run.stream is None:
        run.stream = MinibatchStream(len(images), config.batch_size, config.seed)
    steps_per_epoch = run.stream.batches_per_epoch
    total = config.epochs * steps_per_epoch
    step = run.epoch * steps_per_epoch
    bar = ProgressBar(total, start=step) if progress else None
    test_accuracy = None
    session_start, session_first_step = time.perf_counter(), step
    run.net.train()
    while run.epoch < config.epochs:
        t0 = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for _ in range(steps_per_epoch):
            index = run.stream.next_indices()
            x = pixels_to_unit(augment(images[index], run.augment_rng), np)
            y = labels[index]
            logits = run.net(x)
            loss, grad = cross_entropy(logits, y)
            run.net.backward(grad)
            run.optimizer.lr = one_cycle_lr(step, total, config.lr, config.warmup)
            run.optimizer.step()
            run.optimizer.zero_grad()
            step += 1
            # sums kept as arrays: read once per epoch (and when the bar redraws), never a host sync per step
            loss_sum = loss_sum + loss
            correct = correct + (logits.argmax(axis=1) == y).sum()
            if bar is not None and time.perf_counter() - bar.last_draw >= bar.interval:
                images_per_second = config.batch_size * (step - session_first_step) / (time.perf_counter() - session_start)
                bar.update(step, images_per_second, f"loss {float(loss):.3f} lr {run.optimizer.lr:.4f}")
        run.epoch += 1
        run.seconds += time.perf_counter() - t0
        test_accuracy = accuracy(run.net, *test_data)
        run.net.train()
        record = {"epoch": run.epoch, "iteration": step, "train_loss": float(loss_sum) / steps_per_epoch,
                  "train_accuracy": int(correct) / (steps_per_epoch * config.batch_size),
                  "test_accuracy": test_accuracy, "seconds": round(run.seconds, 1)}
        with open(os.path.join(run.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        run.save(test_accuracy)
        log(f"epoch {run.epoch}/{config.epochs}: train loss {record['train_loss']:.4f}, train accuracy "
            f"{record['train_accuracy']:.4f}, test accuracy {test_accuracy:.4f} ({run.seconds:.0f} s of training)")
    if bar is not None:
        bar.close()
    return test_accuracy
