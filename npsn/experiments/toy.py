"""2-D mixtures of Gaussians for measuring mode collapse: data, MLP models, metrics, training, scatter plots.

The protocol is PacGAN's (Lin, Khetan, Fanti & Oh, "PacGAN: The power of two samples in generative
adversarial networks", NeurIPS 2018, Table 1), which follows VEEGAN (Srivastava et al.,
NeurIPS 2017). Values below were read from the authors' code (github.com/fjxmlzn/PacGAN,
``synthetic_data_experiments``: ``config.py``, ``pacgan_task.py``, ``pacgan/extensions.py``).

Data
    *ring*: 8 isotropic Gaussians with means (cos(2 pi k/8), sin(2 pi k/8)) on the unit circle, std 0.01;
    *grid*: 25 isotropic Gaussians with means {-4, -2, 0, 2, 4}^2, std 0.05; uniform mixture weights.

Models (PacGAN's sizes)
    G: z in R^2 ~ N(0, I) -> 4 x [Linear(400, no bias) -> BatchNorm1d -> ReLU] -> Linear(400, 2).
    D: 3 hidden layers of 200 units -> Linear(200, 1), a logit. PacGAN's D uses LinearMaxout with 5
    pieces; npsn has no maxout layer, so D here is a plain MLP with LeakyReLU(0.2) (or ReLU) --
    a deliberate difference. With ``sn=True`` every Linear of D (the last included) is wrapped in
    :class:`~npsn.nn.spectral_norm.SpectralNorm`, as in Miyato et al. (2018).
    G's weights ~ N(0, 0.02^2), biases 0 (PacGAN's ``IsotropicGaussian(0.02)``, ``Constant(0)``).
    D's initialization is selectable: ``"normal"`` is PacGAN's N(0, 0.02^2); the default
    ``"default"`` keeps npsn's (= PyTorch's) U(-1/sqrt(fan_in), 1/sqrt(fan_in)), because with
    N(0, 0.02^2) and no maxout the 4-layer D starts with logits ~1e-3 and, in our short trial
    runs (single seeds), its loss stayed at log 4 for thousands of iterations.

Training
    Batch 100; each iteration is one D update on a real and a generated batch, then one G update
    on fresh z (the authors' ``SequentialAlgorithm``; :func:`npsn.gan.updates.gan_iteration`).
    PacGAN's loss is the original GAN loss with the non-saturating generator loss
    (``nonsaturating`` in :mod:`npsn.gan.losses`); hinge and Wasserstein are selectable too.
    PacGAN's optimizer is Adam(lr 1e-4, beta1 0.8, beta2 0.999) for 400 epochs of 1,000
    iterations = 400,000 iterations, far beyond a CPU budget. The defaults here, for runs of a
    few thousand iterations, are Adam(2e-4, 0.5, 0.999) -- the SN-GAN paper's setting C
    (Miyato et al. 2018, Table 1) -- which learned much faster in short trial runs.
    Real batches are drawn fresh from the mixture each iteration (PacGAN iterates over a fixed
    set of 100,000 samples).

Metrics (on 2,500 generated samples, as PacGAN's ``MetricLogger``)
    Each sample x is assigned to its nearest mode k in standardized distance
    r(x) = min_k ||x - mu_k|| / sigma. It is *high quality* (HQ) when r(x) < 3. Then

    * modes covered = number of modes with at least one HQ sample assigned;
    * HQ fraction = (number of HQ samples) / (number of samples);
    * reverse KL = KL(p_g || p_data) over modes, with p_g(k) = n_k / sum_j n_j the histogram of the
      HQ samples over modes and p_data(k) = 1/K the true (uniform) mode weights:
      KL = sum_{k: p_g(k) > 0} p_g(k) log(K p_g(k)). It is undefined (NaN) without HQ samples.
      The paper's table reports "reverse KL" without code for it in the released repository,
      whose ``MetricLogger`` logs a JSD of this same HQ histogram against the uniform one; so the
      KL of that histogram is our reading, not a verified reproduction.

    Even exact samples of the mixture are HQ only with probability P(r < 3) for a 2-D standard
    normal, where r^2 is chi-square with 2 degrees of freedom: 1 - exp(-9/2) = 98.89% (not the
    99.7% of the 1-D three-sigma rule).
"""
import dataclasses
import multiprocessing
import time

import numpy as np
from PIL import Image, ImageDraw

from npsn import backend
from npsn.data.mixtures import get_dataset
from npsn.eval.modes import HQ_THRESHOLD, assign_to_modes, mode_metrics
from npsn.gan.mlp import make_discriminator, make_generator
from npsn.gan.losses import get_loss
from npsn.gan.updates import check_finite, discriminator_update, gan_iteration, generator_update
from npsn.optim import Adam


@dataclasses.dataclass
class ToyConfig:
    """Every setting of one 2-D run (PacGAN's except the optimizer, iterations, D's activation and init)."""

    dataset: str = "ring"
    sn: bool = True
    loss: str = "nonsaturating"
    iterations: int = 8000  # generator updates (PacGAN: 400,000)
    batch_size: int = 100
    lr: float = 2e-4  # PacGAN: 1e-4
    beta1: float = 0.5  # PacGAN: 0.8
    beta2: float = 0.999
    n_dis: int = 1
    z_dim: int = 2
    g_hidden: int = 400
    g_depth: int = 4
    d_hidden: int = 200
    d_depth: int = 3
    d_activation: str = "leaky_relu"
    d_init: str = "default"  # PacGAN: "normal"
    d_input_scale: float = 1.0  # D sees s * x (see ToyGAN); 1 = PacGAN
    eval_samples: int = 2500
    seed: int = 0
    device: str = "cpu"

    @property
    def method(self):
        """Short name of the D variant: "SN" or "no-SN"."""
        return "SN" if self.sn else "no-SN"


class ToyGAN:
    """G, D, their Adam optimizers and the host random streams of one 2-D run.

    Seeding: ``SeedSequence(seed)`` is split into four independent host generators -- weights,
    real data, training noise z, and the fixed evaluation z -- so a seed gives the same run on
    the CPU and the GPU (everything random is drawn with NumPy and moved with ``to_device``).

    **D's input scale** s = ``config.d_input_scale``: D is applied to s x instead of x, i.e. the
    critic is x -> D(s x) (a :class:`~npsn.nn.activations.Scale` first layer). With SN, D is 1-Lipschitz (at most) in its input, so x -> D(s x) is
    s-Lipschitz in x: a spectrally normalized D on the ring (modes 0.77 apart, std 0.01) can change
    its logit by at most 0.03 across a mode's 3-std disc, and s raises that bound. It is the same
    as training on data and generator outputs scaled by s; Scale's backward gives the chain rule
    dL/dx = s * dL/d(s x).
    """

    def __init__(self, config):
        self.config = c = config
        backend.check_device(c.device)
        self.xp = backend.xp_for(c.device)
        self.mixture = get_dataset(c.dataset)
        streams = np.random.SeedSequence(c.seed).spawn(4)
        init_rng, data_rng, noise_rng, eval_rng = (np.random.default_rng(s) for s in streams)
        self.data_rng, self.noise_rng = data_rng, noise_rng
        self.G = make_generator(c.z_dim, c.g_hidden, c.g_depth, rng=init_rng).to(c.device)
        self.D = make_discriminator(2, c.d_hidden, c.d_depth, sn=c.sn, activation=c.d_activation,
                                    init=c.d_init, rng=init_rng, input_scale=c.d_input_scale).to(c.device)
        self.opt_g = Adam(self.G.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.opt_d = Adam(self.D.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.d_loss, self.g_loss = get_loss(c.loss)
        self.eval_z = eval_rng.standard_normal((c.eval_samples, c.z_dim)).astype(np.float32)
        self.iteration = 0

    def real_batch(self, n=None):
        """n points of the mixture (default: a batch), drawn on the host, on the device: (n, 2) float32."""
        n = self.config.batch_size if n is None else n
        return backend.to_device(self.mixture.sample(n, self.data_rng)[0], self.config.device)

    def sample_z(self, n=None):
        """n z ~ N(0, I) (default: a batch), drawn on the host, on the device: (n, z_dim) float32."""
        n = self.config.batch_size if n is None else n
        return backend.to_device(self.noise_rng.standard_normal((n, self.config.z_dim)).astype(np.float32),
                                 self.config.device)

    def d_step(self):
        """One D update alone on a real and a generated batch (one pass of 2B points); returns the 0-d loss."""
        return discriminator_update(self.G, self.D, self.opt_d, self.d_loss, self.real_batch(), self.sample_z())

    def g_step(self):
        """One G update alone through a frozen D (D's parameter gradients are not computed); returns the 0-d loss."""
        return generator_update(self.G, self.D, self.opt_g, self.g_loss, self.sample_z())

    def train_iteration(self):
        """``n_dis`` D updates then one G update (:func:`~npsn.gan.updates.gan_iteration`).

        Returns the two 0-d losses (no host transfer).
        """
        loss_d, loss_g = gan_iteration(self.G, self.D, self.opt_d, self.opt_g, (self.d_loss, self.g_loss),
                                       self.config.n_dis, self.real_batch, self.sample_z)
        self.iteration += 1
        return loss_d, loss_g

    def generate(self, z=None):
        """G(z) with BatchNorm's running statistics (eval mode, as PacGAN samples), on the host: (N, 2) float32.

        Args:
            z: (N, z_dim) host array; default the fixed evaluation z of ``eval_samples`` points.
        """
        z = self.eval_z if z is None else z
        self.G.eval()
        try:
            x = self.G(backend.to_device(z, self.config.device))
        finally:
            self.G.train()
        return backend.to_numpy(x)

    def evaluate(self):
        """:func:`mode_metrics` of ``eval_samples`` generated points; returns (metrics, samples)."""
        samples = self.generate()
        return mode_metrics(samples, self.mixture), samples


def train(config, log_every=0, eval_every=0, log=print):
    """Train one 2-D GAN and evaluate it.

    Args:
        config: a :class:`ToyConfig`.
        log_every: print the losses every this many iterations (0: never); each log is one host transfer.
        eval_every: also compute the metrics every this many iterations (0: only at the end).
        log: the print function.
    Returns:
        dict with ``config`` (dict), ``metrics`` (:func:`mode_metrics` at the end), ``final_loss_d``,
        ``final_loss_g`` (floats), ``seconds`` (wall time of training, intermediate evaluations
        included), ``history`` (list of {"iteration", "modes", "hq_fraction", "reverse_kl"}, one per
        ``eval_every``), and under ``samples`` the (eval_samples, 2) host array of generated points.
    Raises:
        npsn.gan.updates.TrainingDiverged: when a logged or final loss is not finite (checked only
        then: each check is one host transfer).
    """
    gan = ToyGAN(config)
    start = time.perf_counter()
    loss_d = loss_g = None
    history = []
    for it in range(1, config.iterations + 1):
        loss_d, loss_g = gan.train_iteration()
        if (log_every and it % log_every == 0) or it == config.iterations:
            ld, lg = check_finite(loss_d, loss_g, it)
            if log_every and it % log_every == 0:
                log(f"  [{config.dataset} {config.method} seed {config.seed}] it {it:6d}"
                    f"  loss_d {ld:.4f}  loss_g {lg:.4f}")
            loss_d, loss_g = ld, lg
        if eval_every and it % eval_every == 0:
            m = gan.evaluate()[0]
            history.append({"iteration": it, "modes": m["modes"], "hq_fraction": m["hq_fraction"],
                            "reverse_kl": m["reverse_kl"]})
            if log_every:
                log(f"  [{config.dataset} {config.method} seed {config.seed}] it {it:6d}  modes {m['modes']}"
                    f"  HQ {100 * m['hq_fraction']:.1f}%  reverse KL {m['reverse_kl']:.3f}")
    backend.synchronize(config.device)
    seconds = time.perf_counter() - start
    metrics, samples = gan.evaluate()
    return {"config": dataclasses.asdict(config), "metrics": metrics, "final_loss_d": loss_d,
            "final_loss_g": loss_g, "seconds": seconds, "history": history, "samples": samples}


REAL_COLOR = (170, 170, 170)
HQ_COLOR = (31, 119, 180)  # generated, within 3 std of a mode
LOW_QUALITY_COLOR = (214, 39, 40)  # generated, farther
MODE_COLOR = (0, 0, 0)


def save_scatter(path, real, generated, mixture, size=600, title=None):
    """Draw real (grey) and generated points (blue if high quality, red otherwise) with Pillow and save a PNG.

    Args:
        path: output file (.png).
        real, generated: (N, 2) arrays on either device.
        mixture: the :class:`GaussianMixture2D`; its square [-extent, extent]^2 is drawn, each mode
            center is marked with a black cross and its 3-std (HQ) circle. Points outside the
            square are not drawn (their number is written under the title).
        size: image width and height in pixels.
        title: text written at the top left.

    Pixel of a point (x, y): column = (x + e) / (2 e) * (size - 1), row = (e - y) / (2 e) * (size - 1)
    (y grows upwards), with e = ``mixture.extent``.
    """
    e = mixture.extent
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)

    def to_pixels(points):
        p = backend.to_numpy(points).astype(np.float64).reshape(-1, 2)
        # col = (x + e) / 2e * (size - 1) ; row = (e - y) / 2e * (size - 1)
        cols = (p[:, 0] + e) / (2 * e) * (size - 1)
        rows = (e - p[:, 1]) / (2 * e) * (size - 1)
        inside = (cols >= 0) & (cols <= size - 1) & (rows >= 0) & (rows <= size - 1)
        return cols, rows, inside

    def dots(points, colors):
        cols, rows, inside = to_pixels(points)
        for c, r, ok, color in zip(cols, rows, inside, colors):
            if ok:
                draw.ellipse([c - 1.5, r - 1.5, c + 1.5, r + 1.5], fill=color)
        return int((~inside).sum())

    dots(real, [REAL_COLOR] * len(real))
    _, r_std = assign_to_modes(generated, mixture)
    outside = dots(generated, [HQ_COLOR if r < HQ_THRESHOLD else LOW_QUALITY_COLOR for r in r_std])
    radius = HQ_THRESHOLD * mixture.std / (2 * e) * (size - 1)
    cols, rows, _ = to_pixels(mixture.means)
    for c, r in zip(cols, rows):
        draw.ellipse([c - radius, r - radius, c + radius, r + radius], outline=MODE_COLOR)
        draw.line([c - 4, r, c + 4, r], fill=MODE_COLOR)
        draw.line([c, r - 4, c, r + 4], fill=MODE_COLOR)
    lines = [title] if title else []
    lines.append(f"grey: real  blue: generated HQ  red: generated, > 3 std  circles: 3 std;"
                 f" {outside} generated off-plot")
    draw.text((6, 4), "\n".join(lines), fill=(0, 0, 0))
    image.save(path)
    return path


def worker_pool_context(device):
    """The start method of the processes that train seeds in parallel: "spawn" on the GPU, else the default (None).

    A forked child inherits the parent's CUDA state, which CUDA does not support: the device
    check has initialized CUDA in this process, so forked workers would fail with "no CUDA
    device is usable". Spawned workers start fresh and initialize CUDA themselves.
    """
    return multiprocessing.get_context("spawn") if device == "gpu" else None
