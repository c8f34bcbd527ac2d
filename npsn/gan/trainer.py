"""Training an SN-GAN: the configuration, its presets, and a resumable training loop.

One *iteration* is ``n_dis`` discriminator updates followed by one generator update (the
paper's Algorithm 1 with Adam: :func:`npsn.gan.updates.gan_iteration`). A run directory holds
``config.json``, ``log.jsonl`` (one JSON object per logged iteration), PNG sample grids from a
fixed z, and ``checkpoint.npz``: G and D (with SN's u, v and BN's running statistics), both
optimizers' moments, the data order and noise generator states, and the iteration. Resuming
from it reproduces the uninterrupted run's losses exactly on NumPy.
"""
import dataclasses
import json
import os
import time

import numpy as np

from npsn import backend
from npsn.data.cifar10 import MinibatchStream
from npsn.data.pixels import pixels_to_unit
from npsn.gan.checkpoint import flatten, load_checkpoint, save_checkpoint, unflatten
from npsn.gan.losses import get_loss
from npsn.gan.models import build_gan
from npsn.gan.updates import TrainingDiverged, check_finite, discriminator_update, gan_iteration, generator_update
from npsn.nn.spectral_norm import spectral_layers
from npsn.optim import Adam
from npsn.utils.images import save_grid
from npsn.utils.progress import ProgressBar


LR_DECAYS = ("none", "linear")  # learning-rate schedules (Trainer.learning_rate)


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; ``PRESETS`` fill in the paper's values per model, the command line overrides them."""

    model: str = "cnn"
    loss: str = "hinge"
    iterations: int = 100_000  # generator updates
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_dis: int = 1  # discriminator updates per generator update
    lr_decay: str = "none"  # one of LR_DECAYS: "none", or "linear" (to 0 at the last iteration)
    z_dim: int = 128
    g_ch: int = 0  # base widths; 0 = the paper's
    d_ch: int = 0
    sn: bool = True
    sn_mode: str = "matrix"  # one of npsn.nn.spectral_norm.SN_MODES: "matrix" (the paper) or "operator"
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 1000
    eval_every: int = 0  # SWD and spectral diagnostics; 0 = off
    eval_images: int = 1000

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


PRESETS = {
    # Miyato et al. 2018, setting C of Table 1: hinge loss, Adam(2e-4, 0.5, 0.999), n_dis 1.
    "cnn": dict(loss="hinge", lr=2e-4, beta1=0.5, beta2=0.999, n_dis=1, lr_decay="none",
                batch_size=64, iterations=100_000),
    # The authors' CIFAR-10 ResNet config (sngan_projection): Adam(2e-4, 0, 0.9), n_dis 5, linear decay.
    "resnet": dict(loss="hinge", lr=2e-4, beta1=0.0, beta2=0.9, n_dis=5, lr_decay="linear",
                   batch_size=64, iterations=50_000),
}


def preset_config(model, **overrides):
    """The preset of ``model`` with ``overrides`` (keys whose value is None are ignored)."""
    values = dict(PRESETS[model], model=model)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


class Trainer:
    """Owns G, D, their optimizers and the data stream, and runs the training loop.

    Args:
        config: a :class:`TrainConfig`.
        images: real images, uint8 (N, 3, 32, 32) NCHW, on the host; copied once to the device.
        out_dir: the run directory (created if needed).
        resume: continue from ``out_dir/checkpoint.npz``.
    """

    def __init__(self, config, images, out_dir, resume=False):
        self.config = config
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.xp = backend.xp_for(config.device)
        c = config
        self.G, self.D = build_gan(c.model, z_dim=c.z_dim, g_ch=c.g_ch, d_ch=c.d_ch, sn=c.sn, seed=c.seed,
                                  sn_mode=c.sn_mode)
        self.G.to(c.device)
        self.D.to(c.device)
        self.d_loss, self.g_loss = get_loss(c.loss)
        self.opt_g = Adam(self.G.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.opt_d = Adam(self.D.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.images = self.xp.asarray(images)  # uint8 on the device: 150 MB for CIFAR-10's training split
        self.stream = MinibatchStream(len(images), c.batch_size, c.seed)
        self.noise = np.random.default_rng([c.seed, 2])  # z is drawn on the host: the same on CPU and GPU
        self.z_fixed = backend.to_device(
            np.random.default_rng([c.seed, 3]).standard_normal((64, c.z_dim)).astype(np.float32), c.device)
        self.iteration = 0
        self.evaluator = None
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
    def real_batch(self):
        """The next minibatch of real images: NCHW float32 in [-1, 1] on the device."""
        idx = self.xp.asarray(self.stream.next_indices())
        return pixels_to_unit(self.images[idx], self.xp)

    def sample_z(self, n=None):
        """n z ~ N(0, I) (default: a batch), drawn on the host, on the device: (n, z_dim) float32."""
        n = self.config.batch_size if n is None else n
        return backend.to_device(self.noise.standard_normal((n, self.config.z_dim)).astype(np.float32),
                                 self.config.device)

    def d_step(self):
        """One discriminator update alone (timed by ``scripts/bench.py``); returns the 0-d loss."""
        return discriminator_update(self.G, self.D, self.opt_d, self.d_loss, self.real_batch(), self.sample_z())

    def g_step(self):
        """One generator update alone through a frozen D (timed by ``scripts/bench.py``); returns the 0-d loss."""
        return generator_update(self.G, self.D, self.opt_g, self.g_loss, self.sample_z())

    def learning_rate(self, iteration):
        """lr at a (0-based) iteration: constant ("none"), or decayed linearly to 0 at the last one ("linear")."""
        c = self.config
        if c.lr_decay == "linear":
            return c.lr * (1 - iteration / c.iterations)
        return c.lr

    def train_iteration(self):
        """n_dis D updates, then one G update (:func:`~npsn.gan.updates.gan_iteration`).

        Returns:
            host floats (loss_d, loss_g).

        Raises:
            TrainingDiverged: when either loss is not finite.
        """
        lr = self.learning_rate(self.iteration)
        self.opt_d.lr = self.opt_g.lr = lr
        loss_d, loss_g = gan_iteration(self.G, self.D, self.opt_d, self.opt_g, (self.d_loss, self.g_loss),
                                       self.config.n_dis, self.real_batch, self.sample_z)
        self.iteration += 1
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
                "noise_state": self.noise.bit_generator.state}
        save_checkpoint(self.checkpoint_path, arrays, meta)

    def load(self, path):
        arrays, meta = load_checkpoint(path)
        self.G.load_state_dict(unflatten("G", arrays))
        self.D.load_state_dict(unflatten("D", arrays))
        self.opt_g.load_state_dict(unflatten("opt_g", arrays))
        self.opt_d.load_state_dict(unflatten("opt_d", arrays))
        self.stream.load_state_dict(unflatten("stream", arrays))
        self.noise.bit_generator.state = meta["noise_state"]
        self.iteration = int(meta["iteration"])

    def save_samples(self, name):
        """An 8x8 grid of G(z_fixed) in eval mode (BN running statistics), as ``name``.png."""
        self.G.eval()
        try:
            save_grid(self.G(self.z_fixed), os.path.join(self.out_dir, f"{name}.png"))
        finally:
            self.G.train()

    def _truncate_log(self):
        """Drop log lines written after the checkpoint we resume from (a crash may have left some)."""
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["iteration"] <= self.iteration]
        with open(self.log_path, "w") as f:
            f.writelines(kept)

    # ------------------------------------------------------------------ the loop
    def run(self, until=None, progress=True):
        """Train up to iteration ``until`` (default: ``config.iterations``); returns the last (loss_d, loss_g).

        Writes samples, log lines and checkpoints at their intervals and a final checkpoint and
        sample grid. On Ctrl-C it writes a checkpoint of the last completed iteration, then
        re-raises KeyboardInterrupt. On divergence it raises :class:`TrainingDiverged` and leaves
        the last good checkpoint in place.
        """
        c = self.config
        until = c.iterations if until is None else min(until, c.iterations)
        self._truncate_log()
        bar = ProgressBar(until, start=self.iteration) if progress else None
        losses = (float("nan"), float("nan"))
        images_per_iteration = c.n_dis * c.batch_size
        t_last, it_last = time.perf_counter(), self.iteration
        try:
            with open(self.log_path, "a") as log:
                while self.iteration < until:
                    t0 = time.perf_counter()
                    losses = self.train_iteration()
                    backend.synchronize(c.device)
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
                    if c.sample_every and it % c.sample_every == 0:
                        self.save_samples(f"samples_{it:06d}")
                    if c.checkpoint_every and it % c.checkpoint_every == 0:
                        self.save()
                    if it % c.log_every == 0 or evaluate:
                        t_last, it_last = time.perf_counter(), it  # time spent logging, sampling, saving is excluded
        except KeyboardInterrupt:
            if bar:
                bar.close()
            self.save()
            raise
        if bar:
            bar.close()
        self.save()
        self.save_samples("samples_final")
        return losses
