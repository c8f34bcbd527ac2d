"""Training an SN-GAN: the configuration, its presets, and a resumable training loop.

One *iteration* is ``n_dis`` discriminator updates followed by one generator update, each with
Adam (:func:`npsn.gan.updates.gan_iteration`; the authors' updaters run the G update first in each
iteration, the same alternation shifted by one update). A run directory holds
``config.json``, ``log.jsonl`` (one JSON object per logged iteration), PNG sample grids from a
fixed z, and ``checkpoint.npz``: G and D (with SN's u, v and BN's running statistics), both
optimizers' moments, the data order and noise generator states, and the iteration. Resuming
from it reproduces the uninterrupted run's losses exactly on NumPy.

A class-conditional run (``num_classes`` K > 0: conditional BN in G, a projection D) feeds each real
batch's labels to D, draws G's labels uniformly from its own checkpointed stream, and draws its
sample grids with one row per class, the class names written left of the rows.

The paper's competing discriminators (``d_norm``, the ``*-gp`` losses, ``weight_clip``: :mod:`npsn.gan.methods`)
and its optimizer settings A-F (``setting``: :data:`SETTINGS`, Table 1) are options of the same config.
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

from npsn import backend
from npsn.data.cifar10 import CIFAR10_CLASSES, MinibatchStream
from npsn.data.pixels import pixels_to_dequantized, pixels_to_unit
from npsn.gan.checkpoint import flatten, load_checkpoint, load_modules, save_checkpoint, unflatten
from npsn.gan.gradient_penalty import PENALIZED_LOSSES
from npsn.gan.losses import LOSSES, get_loss
from npsn.gan.methods import discriminator_regularizers, method_problems
from npsn.gan.models import gan_from_config, sample_latent
from npsn.gan.rundir import cut_log
from npsn.gan.updates import TrainingDiverged, check_finite, discriminator_update, gan_iteration, generator_update
from npsn.nn.spectral_norm import spectral_layers
from npsn.optim import Adam
from npsn.utils.console import notice
from npsn.utils.images import save_class_grid, save_grid
from npsn.utils.progress import ProgressBar


LR_DECAYS = ("none", "linear")  # learning-rate schedules (Trainer.learning_rate)
PIXEL_MAPPINGS = ("unit", "dequantized")  # npsn.data.pixels: p / 127.5 - 1, or p / 128 - 1 + U(0, 1/128)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; a preset of ``PRESETS`` fills in its source's values, the command line overrides them."""

    preset: str = "cnn"  # the PRESETS entry the run started from ("" for none)
    setting: str = ""  # a SETTINGS entry (Table 1: lr, betas, n_dis over the preset's), or "" for none
    model: str = "cnn"
    loss: str = "hinge"  # a loss of npsn.gan.losses.LOSSES, or one with the gradient penalty: wgan-gp, gan-gp
    iterations: int = 100_000  # generator updates
    batch_size: int = 64  # real and generated images per D update
    g_batch_size: int = 0  # generated images per G update (G's BN statistics too); 0 = batch_size
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_dis: int = 1  # discriminator updates per generator update
    lr_decay: str = "none"  # one of LR_DECAYS: "none", or "linear" (to 0 at the last iteration)
    z_dim: int = 128
    z_dist: str = "normal"  # one of npsn.gan.models.Z_DISTRIBUTIONS: "normal" N(0, I) or "uniform" U(-1, 1)
    pixels: str = "unit"  # one of PIXEL_MAPPINGS: how real images become D's inputs
    d_final_bias: bool = True  # a bias on D's final dense layer (sngan_projection's ResNet D has none)
    num_classes: int = 0  # 0: unconditional; K: class-conditional G (conditional BN) and projection D, K classes
    g_ch: int = 0  # base widths; 0 = the model's source's (npsn.gan.models.DEFAULT_WIDTHS)
    d_ch: int = 0
    d_norm: str = "sn"  # one of npsn.gan.cnn.D_NORMS: D's normalization (sn, none; bn, ln, wn, ortho for cnn, sndcgan)
    sn_mode: str = "matrix"  # one of npsn.nn.spectral_norm.SN_MODES: "matrix" (the paper) or "operator"
    weight_clip: float = 0.0  # clip D's layer weights to [-c, c] after each D update; 0 = off
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 10.0  # also a checkpoint when this long has passed since the last one; 0 = off
    eval_every: int = 0  # SWD and spectral diagnostics; 0 = off
    eval_images: int = 1000

    @classmethod
    def from_dict(cls, values):
        """The config of a dict; a run of an older npsn (no ``preset`` key) started from its model's preset,
        one without ``d_norm`` had ``sn`` (true: d_norm "sn", false: "none")."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "d_norm" not in values and "sn" in values:
            values = dict(values, d_norm="sn" if values["sn"] else "none")
        values = {k: v for k, v in values.items() if k in names}
        if "preset" not in values:
            model = values.get("model", cls.model)
            values["preset"] = model if model in LEGACY_PRESETS else ""
        return cls(**values)


_PAPER_CNN = dict(model="cnn", n_dis=1, lr=2e-4, beta1=0.5, beta2=0.999, lr_decay="none", batch_size=64,
                  g_batch_size=0, iterations=100_000, z_dist="normal", pixels="unit", d_final_bias=True)

PRESETS = {
    # g_batch_size=0: the G update uses --batch-size z (as npsn always did); only sngan_projection's differs.
    # Earlier npsn presets, kept byte for byte so that their runs and checkpoints resume exactly.
    "cnn": dict(_PAPER_CNN, loss="hinge"),
    "resnet": dict(model="resnet", loss="hinge", lr=2e-4, beta1=0.0, beta2=0.9, n_dis=5, lr_decay="linear",
                   batch_size=64, g_batch_size=0, iterations=50_000, z_dist="normal", pixels="unit",
                   d_final_bias=True),
    # The paper's standard CNN (Table 3) for each objective of its Table 2, with Table 1's setting C (the paper's
    # values as quoted in issue 14; README "Fidelity" says what was verified where).
    "paper-cnn-hinge": dict(_PAPER_CNN, loss="hinge"),
    "paper-cnn-nonsaturating": dict(_PAPER_CNN, loss="nonsaturating"),
    # pfnet-research/chainer-gan-lib, example.sh: train.py --algorithm stdgan --architecture sndcgan
    # --n_dis 1 --adam_beta1 0.5 --adam_beta2 0.999 (alpha 0.0002, batchsize 64, max_iter 100000 by default).
    "chainer-gan-lib-sndcgan": dict(model="sndcgan", loss="nonsaturating", lr=2e-4, beta1=0.5, beta2=0.999, n_dis=1,
                                    lr_decay="none", batch_size=64, g_batch_size=0, iterations=100_000,
                                    z_dist="uniform", pixels="unit", d_final_bias=True),
    # pfnet-research/sngan_projection, configs/sn_cifar10_unconditional.yml (+ train.py, updater.py,
    # datasets/cifar10.py, dis_models/snresnet_32.py).
    "sngan-projection-resnet": dict(model="resnet", loss="hinge", lr=2e-4, beta1=0.0, beta2=0.9, n_dis=5,
                                    lr_decay="linear", batch_size=64, g_batch_size=128, iterations=50_000,
                                    z_dist="normal", pixels="dequantized", d_final_bias=False),
}
# pfnet-research/sngan_projection, configs/sn_cifar10.yml: the same file as sn_cifar10_unconditional.yml but for
# n_classes: 10 (G's ResNetGenerator: categorical conditional BN; D: SNResNetProjectionDiscriminator) and the
# updater's conditional: True (real labels to D, G's labels from sample_categorical, uniform).
PRESETS["sngan-projection-resnet-conditional"] = dict(PRESETS["sngan-projection-resnet"], num_classes=10)
LEGACY_PRESETS = ("cnn", "resnet")

# What each preset reproduces, in one line (``--help``, the run's config.json "source", the README's tables).
PRESET_SOURCES = {
    "cnn": "npsn's earlier default = paper-cnn-hinge: Table 3 CNN, hinge loss, Adam(2e-4, 0.5, 0.999), n_dis 1, "
           "batch 64, 100k",
    "resnet": "npsn's earlier ResNet: sngan_projection's hyperparameters with one batch of 64 for G and D, a bias "
              "on D's dense layer and pixels p/127.5-1 (use sngan-projection-resnet for the authors' run)",
    "paper-cnn-hinge": "arXiv 1802.05957, Table 3 standard CNN, Table 2's hinge-loss SN-GANs row, Table 1 "
                       "setting C: Adam(2e-4, 0.5, 0.999), n_dis 1, batch 64, 100k G updates",
    "paper-cnn-nonsaturating": "arXiv 1802.05957, Table 3 standard CNN, Table 2's SN-GANs row (non-saturating loss), "
                        "Table 1 setting C: Adam(2e-4, 0.5, 0.999), n_dis 1, batch 64, 100k G updates",
    "chainer-gan-lib-sndcgan": "pfnet-research/chainer-gan-lib example.sh 'stdgan --architecture sndcgan': "
                               "common/net.py DCGANGenerator + SNDCGANDiscriminator, non-saturating loss, "
                               "z ~ U(-1, 1), Adam(2e-4, 0.5, 0.999), n_dis 1, batch 64, 100k",
    "sngan-projection-resnet": "pfnet-research/sngan_projection configs/sn_cifar10_unconditional.yml: ResNet, "
                               "hinge, Adam(2e-4, 0, 0.9), n_dis 5, D batch 64, G batch 128, no bias on D's "
                               "dense layer, pixels p/128-1+U(0,1/128), linear decay over 50k G updates",
    "sngan-projection-resnet-conditional": "pfnet-research/sngan_projection configs/sn_cifar10.yml (the authors' "
                                           "default CIFAR-10 run): sngan-projection-resnet with 10 classes, "
                                           "conditional BN in G, projection D, G's labels uniform",
}


def preset_description(config):
    """The run's preset in one line: its name and source, and which of the preset's model and loss the run replaced.

    >>> preset_description(preset_config("resnet", loss="wasserstein"))  # doctest: +ELLIPSIS
    "resnet: npsn's earlier ResNet: ... (this run replaces the preset's loss hinge with wasserstein)"
    """
    if config.preset not in PRESETS:
        return "(none)"
    preset = PRESETS[config.preset]
    replaced = [f"{name} {preset[name]} with {getattr(config, name)}" for name in ("model", "loss")
                if getattr(config, name) != preset[name]]
    text = f"{config.preset}: {PRESET_SOURCES[config.preset]}"
    return text + (f" (this run replaces the preset's {' and its '.join(replaced)})" if replaced else "")


def presets_help():
    """Every preset in two lines, its source and its values (``scripts/train_cifar.py --help`` ends with it).

    >>> print(presets_help().splitlines()[1])  # doctest: +ELLIPSIS
      cnn: npsn's earlier default = paper-cnn-hinge: Table 3 CNN, hinge loss, ...
    """
    lines = ["presets (each value can be overridden by its option):"]
    for name, values in PRESETS.items():
        lines.append(f"  {name}: {PRESET_SOURCES[name]}")
        lines.append("      " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return "\n".join(lines)


# The paper's Table 1: the optimizer settings of its robustness study (Adam's alpha, beta1, beta2; n_dis).
SETTINGS = {
    "A": dict(lr=1e-4, beta1=0.5, beta2=0.9, n_dis=5),
    "B": dict(lr=1e-4, beta1=0.5, beta2=0.999, n_dis=1),
    "C": dict(lr=2e-4, beta1=0.5, beta2=0.999, n_dis=1),
    "D": dict(lr=1e-3, beta1=0.5, beta2=0.9, n_dis=5),
    "E": dict(lr=1e-3, beta1=0.5, beta2=0.999, n_dis=5),
    "F": dict(lr=1e-3, beta1=0.9, beta2=0.999, n_dis=5),
}


def preset_config(preset, **overrides):
    """The preset named ``preset`` (a key of PRESETS) with ``overrides`` (keys whose value is None are ignored).

    A ``setting`` among the overrides (a key of SETTINGS) sets lr, beta1, beta2 and n_dis over the preset's;
    the other overrides (an explicit ``lr``, say) come last.

    >>> c = preset_config("paper-cnn-nonsaturating", setting="D", beta2=0.99)
    >>> c.setting, c.lr, c.beta1, c.beta2, c.n_dis
    ('D', 0.001, 0.5, 0.99, 5)
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    values.update(SETTINGS.get(overrides.get("setting"), {}))  # an unknown one is left to config_problems
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


# The fields that decide the models' layers and shapes: a checkpoint loads only into the same ones.
ARCHITECTURE_FIELDS = ("model", "z_dim", "g_ch", "d_ch", "d_norm", "sn_mode", "d_final_bias", "num_classes")

#: Keys of the config.json of an older npsn that are no longer options (read by TrainConfig.from_dict).
LEGACY_FIELDS = ("sn",)

# Options a resumed run may change: how long it trains, its learning-rate schedule, what it
# writes and when, and where it runs. Every other option of TrainConfig (model, loss, widths,
# z_dim, d_norm, sn_mode, weight_clip, setting, batch sizes, betas, n_dis, seed, preset, z_dist, pixels, d_final_bias,
# num_classes) is fixed by its checkpoint: they decide the architecture, the draws from the random streams, the D
# update, or what a G update averages over.
RESUMABLE_OPTIONS = ("iterations", "lr", "lr_decay", "device", "log_every", "sample_every", "checkpoint_every",
                     "checkpoint_minutes", "eval_every", "eval_images")

# {option: (its lowest value, whether that value itself is allowed)}; beta1 and beta2 must also be < 1
_LOWER_BOUNDS = {
    "iterations": (1, True), "batch_size": (1, True), "g_batch_size": (0, True), "lr": (0, False),
    "beta1": (0, True), "beta2": (0, True),
    "n_dis": (1, True), "z_dim": (1, True), "g_ch": (0, True), "d_ch": (0, True), "seed": (0, True),
    "log_every": (1, True), "sample_every": (0, True), "checkpoint_every": (0, True),
    "checkpoint_minutes": (0, True), "eval_every": (0, True), "eval_images": (1, True), "num_classes": (0, True),
    "weight_clip": (0, True),
}
GRID_COLUMNS = 10  # a conditional run's sample grid: one row per class, this many z (the same z down each column)

#: The values of ``loss``: the losses on logits, and wgan-gp and gan-gp (one of them with the gradient penalty).
LOSS_CHOICES = tuple(LOSSES) + tuple(PENALIZED_LOSSES)


def config_problems(config):
    """``[(option, message)]`` for every value of ``config`` of the wrong type or out of range (empty when valid).

    >>> config_problems(preset_config("cnn"))
    []
    >>> config_problems(preset_config("cnn", batch_size=0, beta2=1.0))
    [('batch_size', 'must be at least 1, got 0'), ('beta2', 'must be in [0, 1), got 1.0')]
    >>> config_problems(preset_config("cnn", d_norm="bn", loss="wgan-gp"))[0][0]
    'loss'
    """
    from npsn.gan.cnn import D_NORMS
    from npsn.gan.models import MODELS, Z_DISTRIBUTIONS

    choices = {"model": tuple(MODELS), "loss": LOSS_CHOICES, "lr_decay": LR_DECAYS, "device": backend.DEVICES,
               "preset": tuple(PRESETS) + ("",), "z_dist": Z_DISTRIBUTIONS, "pixels": PIXEL_MAPPINGS,
               "d_norm": D_NORMS, "setting": tuple(SETTINGS) + ("",)}
    try:
        from npsn.nn.spectral_norm import SN_MODES
        choices["sn_mode"] = tuple(SN_MODES)
    except ImportError:
        pass
    problems = []
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        kind = type(field.default)
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            problems.append((name, f"must be a finite {kind.__name__}, got {value!r}" if kind is float
                             else f"must be {'true or false' if kind is bool else 'an ' + kind.__name__}, "
                                  f"got {value!r}"))
            continue
        if name in choices and value not in choices[name]:
            problems.append((name, f"must be one of {', '.join(choices[name])}, got {value!r}"))
        elif name in _LOWER_BOUNDS:
            low, inclusive = _LOWER_BOUNDS[name]
            if value < low or (value == low and not inclusive):
                problems.append((name, f"must be {'at least' if inclusive else 'greater than'} {low}, got {value}"))
            elif name in ("beta1", "beta2") and value >= 1:
                problems.append((name, f"must be in [0, 1), got {value}"))
            elif name == "num_classes" and value == 1:
                problems.append((name, "must be 0 (unconditional) or at least 2, got 1"))
    if not problems:  # the combinations, once every value is valid on its own
        problems = method_problems(config.model, config.loss, config.d_norm, config.num_classes)
    return problems


def sample_labels(rng, n, num_classes):
    """n classes drawn uniformly from 0..num_classes-1 by the NumPy Generator ``rng``: int32 (n,) on the host.

    As sngan_projection's ``sample_categorical`` (G's labels in every update of a conditional run).

    >>> sample_labels(np.random.default_rng(0), 5, 10)
    array([8, 6, 5, 2, 3], dtype=int32)
    """
    return rng.integers(0, num_classes, size=n).astype(np.int32)


def checked_labels(labels, n_images, num_classes):
    """The labels of a conditional run as int32 (N,) on the host, checked (ValueError says what is wrong)."""
    if labels is None:
        raise ValueError(f"a conditional run (num_classes={num_classes}) needs the labels of its images")
    labels = np.asarray(labels)
    if labels.shape != (n_images,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape ({n_images},), got {labels.dtype} {labels.shape}")
    if n_images and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return labels.astype(np.int32)


class Trainer:
    """Owns G, D, their optimizers and the data stream, and runs the training loop.

    Args:
        config: a :class:`TrainConfig`.
        images: real images, uint8 (N, 3, 32, 32) NCHW, on the host; copied once to the device.
        out_dir: the run directory (created if needed).
        resume: continue from ``out_dir/checkpoint.npz``.
        labels: the images' classes, integers (N,) in 0..num_classes-1 on the host; required when
            ``config.num_classes`` > 0, ignored otherwise.
        class_names: the K class names of a conditional run (default ``CIFAR10_CLASSES``), written
            on its sample grids and kept in its checkpoint.

    Random streams (NumPy Generators seeded ``[seed, i]``): i = 2 z, 3 the grids' fixed z, 6 the
    dequantization noise, 7 G's labels (conditional runs only; an unconditional run never draws
    from it), 8 the gradient penalty's interpolation weights (``*-gp`` losses only), all checkpointed;
    0 and 1 seed the weights, 4 and 5 the evaluator.

    Attributes beside the models and optimizers: ``d_regularizers``, what the run's method adds to each
    D update (:func:`~npsn.gan.methods.discriminator_regularizers`; empty for SN).
    """

    def __init__(self, config, images, out_dir, resume=False, labels=None, class_names=None):
        self.config = config
        self.out_dir = out_dir
        self.xp = backend.xp_for(config.device)
        c = config
        self.G, self.D = gan_from_config(c)
        self.G.to(c.device)
        self.D.to(c.device)
        # a *-gp loss is its loss on logits plus the gradient penalty, one of the D update's regularizers
        self.d_loss, self.g_loss = get_loss(PENALIZED_LOSSES.get(c.loss, c.loss))
        self.penalty_noise = np.random.default_rng([c.seed, 8])  # the gradient penalty's epsilon
        self.d_regularizers = discriminator_regularizers(self.D, c.loss, c.d_norm, c.weight_clip, self.sample_eps)
        self.opt_g = Adam(self.G.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.opt_d = Adam(self.D.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.images = self.xp.asarray(images)  # uint8 on the device: 150 MB for CIFAR-10's training split
        self.stream = MinibatchStream(len(images), c.batch_size, c.seed)
        self.noise = np.random.default_rng([c.seed, 2])  # z is drawn on the host: the same on CPU and GPU
        # the dequantization noise of the real images (pixels="dequantized"), checkpointed like the others
        self.pixel_noise = np.random.default_rng([c.seed, 6])
        self.g_batch_size = c.g_batch_size or c.batch_size
        self.labels = self.label_noise = self.y_fixed = self.class_names = None
        grid_rng = np.random.default_rng([c.seed, 3])
        if c.num_classes:
            self.labels = self.xp.asarray(checked_labels(labels, len(images), c.num_classes))
            self.label_noise = np.random.default_rng([c.seed, 7])  # G's labels
            self.class_names = [str(name) for name in (CIFAR10_CLASSES if class_names is None else class_names)]
            if len(self.class_names) != c.num_classes:
                raise ValueError(f"{len(self.class_names)} class names for {c.num_classes} classes")
            # the grid: row k holds class k, column j the same z_j in every row
            z = np.tile(sample_latent(grid_rng, GRID_COLUMNS, c.z_dim, c.z_dist), (c.num_classes, 1))
            self.y_fixed = backend.to_device(np.repeat(np.arange(c.num_classes, dtype=np.int32), GRID_COLUMNS),
                                             c.device)
        else:
            z = sample_latent(grid_rng, 64, c.z_dim, c.z_dist)
        self.z_fixed = backend.to_device(z, c.device)
        self.iteration = 0
        self.saved_iteration = None  # the iteration of the checkpoint on disk (None: none written yet)
        self.evaluator = None
        self.notice = notice  # where a note for the user goes (stderr); replaceable, e.g. to collect them
        if resume:
            self.load(self.checkpoint_path)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, "checkpoint.npz")

    @property
    def log_path(self):
        return os.path.join(self.out_dir, "log.jsonl")

    # ------------------------------------------------------------------ one update each
    def _to_inputs(self, pixels):
        """uint8 images -> D's inputs: NCHW float32 in [-1, 1] on the device (``config.pixels``:
        p / 127.5 - 1, or p / 128 - 1 + U(0, 1/128) with the noise from ``self.pixel_noise``)."""
        if self.config.pixels == "dequantized":
            return pixels_to_dequantized(pixels, self.pixel_noise, self.xp)
        return pixels_to_unit(pixels, self.xp)

    def real_batch(self):
        """The next minibatch of real images: NCHW float32 in [-1, 1] on the device."""
        return self._to_inputs(self.stream.next_batch(self.images))

    def real_labelled_batch(self):
        """The next minibatch of a conditional run: (images as :meth:`real_batch`, their labels int32 (B,)).

        The same draws as :meth:`real_batch` (indices, then dequantization noise)."""
        pixels, labels = self.stream.next_batch(self.images, self.labels)
        return self._to_inputs(pixels), labels

    def sample_y(self, n):
        """n classes for G, uniform, from the checkpointed ``label_noise`` stream: int32 (n,) on the device."""
        return backend.to_device(sample_labels(self.label_noise, n, self.config.num_classes), self.config.device)

    def sample_z(self, n=None):
        """n z (default: a D batch) from ``config.z_dist``, drawn on the host, on the device: (n, z_dim) float32."""
        n = self.config.batch_size if n is None else n
        return backend.to_device(sample_latent(self.noise, n, self.config.z_dim, self.config.z_dist),
                                 self.config.device)

    def sample_g_z(self):
        """The z of a G update: ``g_batch_size`` of them (sngan_projection's ``n_gen_samples``)."""
        return self.sample_z(self.g_batch_size)

    def sample_eps(self, n):
        """n interpolation weights of the gradient penalty, U[0, 1], drawn on the host from the checkpointed
        ``penalty_noise`` stream, on the device: (n,) float32."""
        return backend.to_device(self.penalty_noise.uniform(0.0, 1.0, n).astype(np.float32), self.config.device)

    def d_step(self):
        """One discriminator update alone (timed by ``scripts/bench.py``); returns the 0-d loss."""
        if not self.config.num_classes:
            return discriminator_update(self.G, self.D, self.opt_d, self.d_loss, self.real_batch(), self.sample_z(),
                                        regularizers=self.d_regularizers)
        x, y = self.real_labelled_batch()
        z = self.sample_z()
        return discriminator_update(self.G, self.D, self.opt_d, self.d_loss, x, z, y, self.sample_y(z.shape[0]),
                                    self.d_regularizers)

    def g_step(self):
        """One generator update alone through a frozen D (timed by ``scripts/bench.py``); returns the 0-d loss."""
        z = self.sample_g_z()
        y = self.sample_y(z.shape[0]) if self.config.num_classes else None
        return generator_update(self.G, self.D, self.opt_g, self.g_loss, z, y)

    def learning_rate(self, iteration):
        """lr at a (0-based) iteration: constant ("none"), or decayed linearly to 0 at the last one ("linear")."""
        c = self.config
        if c.lr_decay == "linear":
            return c.lr * (1 - iteration / c.iterations)
        return c.lr

    def run_updates(self):
        """n_dis D updates, then one G update (:func:`~npsn.gan.updates.gan_iteration`) at this iteration's
        learning rate; advances ``iteration`` and returns the 0-d device losses (loss_d, loss_g), unread."""
        lr = self.learning_rate(self.iteration)
        self.opt_d.lr = self.opt_g.lr = lr
        conditional = bool(self.config.num_classes)
        losses = gan_iteration(self.G, self.D, self.opt_d, self.opt_g, (self.d_loss, self.g_loss),
                               self.config.n_dis, self.real_labelled_batch if conditional else self.real_batch,
                               self.sample_z, self.sample_g_z, self.sample_y if conditional else None,
                               self.d_regularizers)
        self.iteration += 1
        return losses

    def train_iteration(self):
        """One training iteration (:meth:`run_updates`), its losses read back and checked.

        Returns:
            host floats (loss_d, loss_g).

        Raises:
            TrainingDiverged: when either loss is not finite.
        """
        loss_d, loss_g = self.run_updates()
        # one small device-to-host transfer per iteration: the two losses, to detect divergence
        return check_finite(loss_d, loss_g, self.iteration)

    # ------------------------------------------------------------------ state
    def sigmas(self):
        """{D layer name: its current power-iteration sigma} as host floats."""
        return {name: backend.to_float(sn.sigma) for name, sn in spectral_layers(self.D)}

    def parameters_finite(self):
        xp = self.xp
        return all(bool(xp.isfinite(p.data).all()) for m in (self.G, self.D) for p in m.parameters())

    def save(self):
        """Write the checkpoint atomically (refusing to overwrite a good one with non-finite parameters)."""
        if not self.parameters_finite():
            raise TrainingDiverged(f"non-finite parameter at iteration {self.iteration}")
        arrays = {}
        arrays.update(flatten("G", self.G.state_dict()))
        arrays.update(flatten("D", self.D.state_dict()))
        arrays.update(flatten("opt_g", self.opt_g.state_dict()))
        arrays.update(flatten("opt_d", self.opt_d.state_dict()))
        arrays.update(flatten("stream", self.stream.state_dict()))
        meta = {"iteration": self.iteration, "config": dataclasses.asdict(self.config),
                "noise_state": self.noise.bit_generator.state,
                "pixel_noise_state": self.pixel_noise.bit_generator.state}
        if self.config.num_classes:  # absent from unconditional checkpoints, which stay as they were
            meta["label_noise_state"] = self.label_noise.bit_generator.state
            meta["class_names"] = self.class_names
        if self.config.loss in PENALIZED_LOSSES:  # likewise absent without a gradient penalty
            meta["penalty_noise_state"] = self.penalty_noise.bit_generator.state
        save_checkpoint(self.checkpoint_path, arrays, meta)
        self.saved_iteration = self.iteration  # only once the file is in place
        self._last_save = time.monotonic()

    def load(self, path):
        """Restore everything from a checkpoint. Keys, shapes and dtypes are checked against this
        trainer's models, optimizers and stream (KeyError, ValueError or TypeError when they differ)."""
        arrays, meta = load_checkpoint(path)
        trained = meta.get("config", {})
        for name in ARCHITECTURE_FIELDS:
            if name in trained and trained[name] != getattr(self.config, name):
                raise ValueError(f"the checkpoint holds {name}={trained[name]!r} but this run builds "
                                 f"{name}={getattr(self.config, name)!r}")
        load_modules(arrays, {"G": self.G, "D": self.D})
        self.opt_g.load_state_dict(unflatten("opt_g", arrays))
        self.opt_d.load_state_dict(unflatten("opt_d", arrays))
        self.stream.load_state_dict(unflatten("stream", arrays))
        self.noise.bit_generator.state = meta["noise_state"]
        if "pixel_noise_state" in meta:  # absent from checkpoints of older npsn (which never drew from it)
            self.pixel_noise.bit_generator.state = meta["pixel_noise_state"]
        if self.config.num_classes:
            self.label_noise.bit_generator.state = meta["label_noise_state"]  # KeyError: not a conditional run's
        if self.config.loss in PENALIZED_LOSSES:
            self.penalty_noise.bit_generator.state = meta["penalty_noise_state"]  # KeyError: not a penalized run's
        self.iteration = self.saved_iteration = int(meta["iteration"])

    def save_samples(self, name):
        """A grid of G(z_fixed) in eval mode (BN running statistics), as ``name``.png: 8x8, or for a
        conditional run one row of ``GRID_COLUMNS`` per class, its name on the left
        (:func:`~npsn.utils.images.save_class_grid`)."""
        path = os.path.join(self.out_dir, f"{name}.png")
        self.G.eval()
        try:
            if self.config.num_classes:
                save_class_grid(self.G(self.z_fixed, self.y_fixed), path, self.class_names)
            else:
                save_grid(self.G(self.z_fixed), path)
        finally:
            self.G.train()

    def _open_log(self):
        """The log file, opened for appending (a data-parallel rank other than 0 writes nowhere)."""
        return open(self.log_path, "a")

    def _truncate_log(self):
        """Cut the log back to the iteration we start from (:func:`~npsn.gan.rundir.cut_log`): later lines
        (a crash may have left some) and a torn last line go, the latter with a notice; at iteration 0 (a new
        run, or one started again because it stopped before its first checkpoint) the log starts empty."""
        cut_log(self.log_path, self.iteration, notice=self.notice)

    # ------------------------------------------------------------------ the loop
    def run(self, until=None, progress=True):
        """Train up to iteration ``until`` (default: ``config.iterations``); returns the last (loss_d, loss_g).

        Writes samples, log lines and checkpoints at their intervals, a first sample grid at
        iteration 1 (when ``sample_every`` is not 0), a checkpoint whenever ``checkpoint_minutes``
        have passed since the last one, and a final checkpoint and sample grid. On Ctrl-C it
        writes a checkpoint of the last completed iteration and its sample grid, then re-raises
        KeyboardInterrupt (``saved_iteration`` tells what is on disk, should a second signal
        interrupt that save). On divergence it raises :class:`TrainingDiverged` and leaves the
        last good checkpoint in place. An OSError of a write (a full disk) propagates at once:
        the checkpoint on disk is then still the one of ``saved_iteration``.
        """
        c = self.config
        until = c.iterations if until is None else min(until, c.iterations)
        os.makedirs(self.out_dir, exist_ok=True)
        self._truncate_log()
        self._last_save = time.monotonic()
        bar = ProgressBar(until, start=self.iteration) if progress else None
        losses = (float("nan"), float("nan"))
        images_per_iteration = c.n_dis * c.batch_size
        t_last, it_last = time.perf_counter(), self.iteration
        try:
            with self._open_log() as log:
                while self.iteration < until:
                    t0 = time.perf_counter()
                    # the iteration's one wait for the device: its losses read back (check_finite), which on a
                    # GPU also means all its work is done, so the clock below reads the iteration's real time
                    losses = self.train_iteration()
                    it = self.iteration
                    if bar:
                        rate = images_per_iteration / max(time.perf_counter() - t0, 1e-9)
                        bar.update(it, rate, f"loss_d {losses[0]:.4f} loss_g {losses[1]:.4f}", force=it == until)
                    evaluate = self.evaluator is not None and c.eval_every and it % c.eval_every == 0
                    if it % c.log_every == 0 or it == until or evaluate:
                        # real images per second over the iterations since the last log line
                        seconds = time.perf_counter() - t_last
                        record = {"iteration": it, "loss_d": losses[0], "loss_g": losses[1], "lr": self.opt_g.lr,
                                  "images_per_s": (it - it_last) * images_per_iteration / max(seconds, 1e-9),
                                  "seconds_per_iteration": seconds / max(it - it_last, 1), "sigma": self.sigmas()}
                        if evaluate:
                            record.update(self.evaluator(self))
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if c.sample_every and (it % c.sample_every == 0 or it == 1):
                        self.save_samples(f"samples_{it:06d}")  # iteration 1: the first look, a minute in
                    if c.checkpoint_every and it % c.checkpoint_every == 0:
                        self.save()
                    elif c.checkpoint_minutes and time.monotonic() - self._last_save >= 60 * c.checkpoint_minutes:
                        self.save()
                    if it % c.log_every == 0 or evaluate:
                        t_last, it_last = time.perf_counter(), it  # time spent logging, sampling, saving is excluded
        except KeyboardInterrupt:
            if bar:
                bar.close()
            self.save()
            if c.sample_every:
                self.save_samples(f"samples_{self.iteration:06d}")
            raise
        if bar:
            bar.close()
        self.save()
        self.save_samples("samples_final")
        return losses
