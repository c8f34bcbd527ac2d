"""What is timed: the phases of a training step, on npsn's side and on PyTorch's.

For each model, with the model's training preset (its loss -- hinge for both -- and Adam with
the preset's lr and betas) and float32 weights in training mode (BatchNorm uses batch
statistics, spectral normalization runs its power iteration in every forward):

* ``D forward``: D(x) on a batch of B real images (kept for a backward: npsn caches, torch records its graph);
* ``G forward``: G(z) on B noise vectors (the same);
* ``D update``: :meth:`npsn.gan.trainer.Trainer.d_step` -- G(z) without a backward, one D pass over the
  2B images real + fake concatenated, the loss, D backward, Adam step;
* ``G update``: :meth:`~npsn.gan.trainer.Trainer.g_step` -- G(z), D with its parameters frozen, G backward, Adam step;
* ``iteration``: :meth:`~npsn.gan.trainer.Trainer.train_iteration` with ``n_dis = 1``: one D update and one
  G update (whatever the preset's ``n_dis``; the ResNet preset trains with 5 D updates per iteration).

The real images are random uint8 arrays (never CIFAR-10), the noise N(0, I), as in training.
The torch side is :class:`npsn.testing.torch_reference.TorchTrainer`, the same step in PyTorch
from the npsn trainer's weights, batches and noise.
"""
import numpy as np

from npsn import backend
from npsn.data.pixels import pixels_to_unit
from npsn.gan.trainer import Trainer, preset_config

PHASES = (
    ("d_forward", "D forward"),
    ("g_forward", "G forward"),
    ("d_update", "D update"),
    ("g_update", "G update"),
    ("iteration", "iteration (D+G update)"),
)
N_IMAGES = 512  # synthetic uint8 "real" images


def make_trainer(config, model, out_dir):
    """An npsn Trainer for ``model``'s preset with n_dis = 1, on synthetic images; returns (trainer, images)."""
    train_config = preset_config(model, n_dis=1, batch_size=config.batch_size, device=config.device,
                                 seed=config.seed, g_ch=config.g_ch, d_ch=config.d_ch,
                                 sn_mode=config.sn_mode)
    n_images = max(N_IMAGES, config.batch_size)
    images = np.random.default_rng([config.seed, 10]).integers(0, 256, (n_images, 3, 32, 32), dtype=np.uint8)
    return Trainer(train_config, images, out_dir), images


def fixed_inputs(trainer, images):
    """(x, z) on the host: the first B images scaled to [-1, 1] (NCHW float32) and B noise vectors."""
    b = trainer.config.batch_size
    x = pixels_to_unit(images[:b], np)
    z = np.random.default_rng([trainer.config.seed, 11]).standard_normal((b, trainer.config.z_dim)).astype(np.float32)
    return x, z


class Side:
    """The timed phases (see ``PHASES``), the same calls on either library's trainer, images x and noise z."""

    def d_forward(self):
        self.trainer.D(self.x)

    def g_forward(self):
        self.trainer.G(self.z)

    def d_update(self):
        self.trainer.d_step()

    def g_update(self):
        self.trainer.g_step()

    def iteration(self):
        return self.trainer.train_iteration()


class NpsnSide(Side):
    """The phases of npsn's training step, run by the Trainer itself."""

    name = "npsn"

    def __init__(self, trainer, x, z):
        self.trainer, self.device = trainer, trainer.config.device
        self.x = backend.to_device(x, self.device)
        self.z = backend.to_device(z, self.device)

    def synchronize(self):
        backend.synchronize(self.device)


class TorchSide(Side):
    """The same phases in PyTorch (:class:`~npsn.testing.torch_reference.TorchTrainer` of the npsn trainer).

    Build it before the npsn trainer's first update: it copies the trainer's weights, data
    stream and noise state, so that both sides then see the same batches.
    """

    name = "torch"

    def __init__(self, trainer, x, z):
        import torch

        from npsn.testing.torch_reference import TorchTrainer

        self.trainer = TorchTrainer(trainer)
        self.x = torch.from_numpy(x).to(self.trainer.device)
        self.z = torch.from_numpy(z).to(self.trainer.device)

    def synchronize(self):
        self.trainer.synchronize()
