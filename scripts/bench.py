"""Benchmark npsn's SN-GAN models, optionally against the same architecture in PyTorch.

    python scripts/bench.py                                   # cpu, cnn and resnet, batch 64
    python scripts/bench.py --compare torch --threads 2
    python scripts/bench.py --compare torch --repeats cnn=10,resnet=3 --warmup cnn=2,resnet=1
    python scripts/bench.py --device gpu --compare torch

**Phases.** For each model (``--models``), with the model's training preset (hinge loss, Adam
with the preset's lr and betas) and float32 weights in training mode (BatchNorm uses batch
statistics, spectral normalization runs its power iteration in every forward):

* ``D forward``: D(x) on a batch of B real images (kept for a backward: npsn caches, torch records its graph);
* ``G forward``: G(z) on B noise vectors (the same);
* ``D update``: :meth:`npsn.gan.trainer.Trainer.d_step` -- G(z) without a backward, one D pass over the
  2B images real + fake concatenated, hinge loss, D backward, Adam step;
* ``G update``: :meth:`~npsn.gan.trainer.Trainer.g_step` -- G(z), D with its parameters frozen, G backward, Adam step;
* ``iteration``: :meth:`~npsn.gan.trainer.Trainer.train_iteration` with ``n_dis = 1``: one D update and one
  G update (whatever the preset's ``n_dis``; the ResNet preset trains with 5 D updates per iteration).

Each time is the median (min and max are reported too) of ``--repeats`` timed calls after
``--warmup`` untimed ones. With ``--device gpu`` the device is synchronized before every clock read.
When two sides are timed, each timed call first idles ``--settle`` seconds (default 0.2): after a
call, the library's idle worker threads keep spinning for a while (OpenBLAS about 0.1 s), and on a
few cores they would slow the other library's next call down (measured: a PyTorch convolution
right after a NumPy matrix product took 3x its time). Training runs one library only.
The real images are random uint8 arrays (never CIFAR-10), the noise N(0, I), as in training.

**--compare torch** builds the *same* architecture in PyTorch (which npsn never depends on) by
walking npsn's module tree (:func:`torch_model_from_npsn`), loads npsn's initial weights into it
through the PyTorch-compatible ``state_dict`` (strictly), checks that both give the same D and G
outputs and D input gradient on one batch (in float64 on copies, and in float32), and the same
losses over two training iterations (:func:`check_against_torch`), then times the two alternately,
phase by phase (the first side alternates between repetitions), with the same threads, and prints
npsn / torch ratios. The torch side mirrors
Trainer: concatenated real + fake D pass, G under ``torch.no_grad()`` for the D update, D's
``requires_grad`` off for the G update, ``torch.optim.Adam`` with its default implementation, and
one device-to-host copy of the two losses per iteration. On the GPU, TF32 is turned off in PyTorch
so that both sides compute in float32.

**Threads.** ``--threads N`` sets OMP/OPENBLAS/MKL_NUM_THREADS before NumPy is imported, limits
every BLAS and OpenMP pool with threadpoolctl when it is installed, sets npsn's host threads
(:func:`npsn.utils.threads.set_num_threads`, which split im2col/col2im and elementwise kernels) and calls
``torch.set_num_threads(N)``. Without it each library keeps its default. The BLAS in use and its
thread count are reported. ``OPENBLAS_THREAD_TIMEOUT=4`` (:data:`npsn.utils.threads.BLAS_ENVIRONMENT`)
is set, unless already set, so that OpenBLAS's idle threads sleep at once rather than spin while
npsn's host threads work (``scripts/train_cifar.py`` sets it too).

**Allocator** (``--malloc``, Linux/glibc). A training step allocates and frees arrays of hundreds
of MB (im2col matrices, activations). glibc serves blocks that large with ``mmap`` and ``munmap`` s
them when freed, so every step faults (and the kernel zeroes) them in again. ``--malloc no-trim``
(the default) restarts the process with ``MALLOC_MMAP_MAX_=0`` (every block from the heap) and
``MALLOC_TRIM_THRESHOLD_=2147483647`` (the heap is not given back), so freed memory is reused;
``--malloc default`` restarts it with no ``MALLOC_*`` variable, i.e. glibc's dynamic defaults.
Both sides run in that one process, hence under the same setting. The cost of ``no-trim`` is that
the process keeps its peak memory. Whether freed memory is actually reused is measured (a freed
64 MiB block allocated again without page faults) and reported, and so are the minor page
faults of each phase.

**Memory.** Peak host RSS (and, on the GPU, device memory: CuPy's pool, PyTorch's peak allocated
and reserved) is measured for each side in a fresh process that builds one model and runs two
training iterations (the second one has Adam's moments as well as the step's temporaries), so
that neither side's freed-but-kept memory inflates the other's; ``--memory off`` skips it. The
torch process builds the npsn models it copies the weights from and releases them before training.

**Breakdown** (``--breakdown``): npsn's iteration time split into the convolutions' matrix
products (BLAS), im2col/col2im copies, and everything else (:func:`time_breakdown`), with the
products' share of PyTorch's whole iteration when comparing.

**Output**: a table per model, then one JSON line with every number (``--json-only``: the JSON only).
NumPy, npsn and PyTorch are imported inside functions, after the thread and allocator settings.
"""
import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # run from anywhere without installing npsn

MODELS = ("cnn", "resnet")
PHASES = (
    ("d_forward", "D forward"),
    ("g_forward", "G forward"),
    ("d_update", "D update"),
    ("g_update", "G update"),
    ("iteration", "iteration (D+G update)"),
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# glibc reads these at start-up; --malloc restarts the process with exactly one of these sets.
MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
# npsn.utils.threads.BLAS_ENVIRONMENT (copied: it must be set before NumPy, hence npsn, is imported)
BLAS_ENVIRONMENT = {"OPENBLAS_THREAD_TIMEOUT": "4"}
MALLOC_SETTINGS = {
    "default": {},
    "no-trim": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
}
RESTARTED = "NPSN_BENCH_RESTARTED"  # set in the restarted process, to refuse a second restart
N_IMAGES = 512  # synthetic uint8 "real" images
PROBE_ITERATIONS = 2
# check_against_torch flags a mismatch above these max relative errors
CHECK_FLOAT64 = 1e-9
CHECK_FLOAT32 = 1e-4  # outputs (D's input gradient is not checked in float32: see check_against_torch)
CHECK_LOSSES = 1e-2  # losses after training iterations in float32, where ReLU kinks and Adam's first steps amplify rounding


# ---------------------------------------------------------------------------------------------- arguments
def per_model(text):
    """``"10"`` -> {None: 10}; ``"cnn=10,resnet=3"`` -> {"cnn": 10, "resnet": 3} (for --repeats, --warmup)."""
    values = {}
    for part in text.split(","):
        name, _, count = part.rpartition("=")
        if name and name not in MODELS:
            raise argparse.ArgumentTypeError(f"unknown model {name!r} in {text!r}")
        if not count.isdigit():
            raise argparse.ArgumentTypeError(f"expected N or MODEL=N,..., got {text!r}")
        values[name or None] = int(count)
    return values


def model_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--models takes a comma-separated subset of {','.join(MODELS)}, got {text!r}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--models", type=model_list, default=list(MODELS), help="comma-separated (default: cnn,resnet)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=per_model, default={None: 10}, help="timed calls per phase: N or cnn=N,resnet=M")
    p.add_argument("--warmup", type=per_model, default={None: 2}, help="untimed calls per phase first: N or cnn=N,...")
    p.add_argument("--compare", choices=("none", "torch"), default="none")
    p.add_argument("--settle", type=float, default=0.2,
                   help="seconds of idle before each timed call when comparing (lets spinning threads sleep)")
    p.add_argument("--threads", type=int, help="BLAS/OpenMP/PyTorch threads for both sides (default: libraries' own)")
    p.add_argument("--malloc", choices=tuple(MALLOC_SETTINGS), default="no-trim", help="glibc allocator setting")
    p.add_argument("--memory", choices=("probe", "off"), default="probe", help="peak memory in fresh processes")
    p.add_argument("--breakdown", action="store_true",
                   help="also split npsn's iteration time into convolution matrix products, im2col/col2im and the rest")
    p.add_argument("--g-ch", type=int, help="generator width (default: the paper's; small values for smoke tests)")
    p.add_argument("--d-ch", type=int, help="discriminator width (default: the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.add_argument("--probe-memory", choices=("npsn", "torch"), help=argparse.SUPPRESS)  # internal: one memory probe
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        p.error("--batch-size and --threads must be positive")
    return args


def count_for(values, model, default):
    """The count of ``model`` from a :func:`per_model` dict: its own, else the one given for all, else ``default``."""
    return values.get(model, values.get(None, default))


# ---------------------------------------------------------------------------------------------- process set-up
def is_glibc():
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def configure_process(args):
    """Set thread variables, then restart this process under the requested allocator setting if needed.

    Must run before NumPy is imported. Returns only when the environment is as requested.
    """
    if args.threads is not None:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(args.threads)
    for name, value in BLAS_ENVIRONMENT.items():  # npsn.utils.threads.BLAS_ENVIRONMENT; read when NumPy loads OpenBLAS
        os.environ.setdefault(name, value)
    if not is_glibc():
        return
    wanted = MALLOC_SETTINGS[args.malloc]
    if all(os.environ.get(name) == wanted.get(name) for name in MALLOC_VARIABLES):
        return
    if os.environ.get(RESTARTED):
        raise RuntimeError("the allocator environment did not survive the restart")
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARIABLES}
    env.update(wanted)
    env[RESTARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    argv = sys.orig_argv[1:] if hasattr(sys, "orig_argv") else [os.path.abspath(__file__)] + sys.argv[1:]
    os.execve(sys.executable, [sys.executable] + argv, env)


def limit_threads(n):
    """Limit every BLAS/OpenMP pool loaded so far, npsn's host threads and PyTorch's (if imported) to ``n`` threads."""
    if n is None:
        return
    from npsn.utils import threads
    threads.set_num_threads(n)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(limits=n)
    except ImportError:
        pass  # the environment variables set before importing NumPy still apply
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def thread_pools():
    """[{library, version, threads, ...}] of the BLAS and OpenMP pools loaded in this process."""
    try:
        import threadpoolctl
    except ImportError:
        import numpy as np
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            return [{"library": blas.get("name"), "version": blas.get("version"), "threads": None}]
        except Exception:
            return []
    return [{"library": info.get("internal_api"), "version": info.get("version"), "threads": info.get("num_threads"),
             "threading_layer": info.get("threading_layer"), "architecture": info.get("architecture"),
             "file": os.path.basename(info.get("filepath", ""))} for info in threadpoolctl.threadpool_info()]


# ---------------------------------------------------------------------------------------------- memory
MIB = 2**20


def _proc_status(field):
    """A ``VmXXX`` field of /proc/self/status in bytes, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss():
    return _proc_status("VmRSS")


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    """Peak RSS in bytes since start or the last :func:`reset_peak_rss`."""
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def freed_memory_is_reused(nbytes=64 * MIB):
    """Allocate, touch and free ``nbytes`` twice; True if the second time faulted in (almost) no pages.

    Measures what the allocator does with a large freed block: keep it for reuse (no faults), or
    return it to the OS, so that its pages fault in again (at least one fault per 2 MiB, the
    transparent huge page size that NumPy asks for).
    """
    import numpy as np

    for attempt in range(2):
        before = minor_faults()
        block = np.empty(nbytes, dtype=np.uint8)
        block.fill(1)
        del block
        faults = minor_faults() - before
    return faults < nbytes / (2 * MIB) / 2


# ---------------------------------------------------------------------------------------------- npsn side
def make_trainer(args, model, out_dir):
    """An npsn Trainer for ``model``'s preset with n_dis = 1, on synthetic images; returns (trainer, images)."""
    import numpy as np
    from npsn.gan.trainer import Trainer, preset_config

    config = preset_config(model, n_dis=1, batch_size=args.batch_size, device=args.device, seed=args.seed,
                           g_ch=args.g_ch, d_ch=args.d_ch)
    if config.loss != "hinge":
        raise NotImplementedError(f"the torch side implements the hinge loss only, the {model} preset uses {config.loss}")
    n_images = max(N_IMAGES, args.batch_size)
    images = np.random.default_rng([args.seed, 10]).integers(0, 256, (n_images, 3, 32, 32), dtype=np.uint8)
    return Trainer(config, images, out_dir), images


def fixed_inputs(trainer, images):
    """(x, z) on the host: the first B images scaled to [-1, 1] (NCHW float32) and B noise vectors."""
    import numpy as np

    b = trainer.config.batch_size
    x = images[:b].astype(np.float32) / 127.5 - 1
    z = np.random.default_rng([trainer.config.seed, 11]).standard_normal((b, trainer.config.z_dim)).astype(np.float32)
    return x, z


class NpsnSide:
    """The phases of npsn's training step, run by the Trainer itself."""

    name = "npsn"

    def __init__(self, trainer, x, z):
        from npsn import backend

        self.trainer, self.backend, self.device = trainer, backend, trainer.config.device
        self.x = backend.to_device(x, self.device)
        self.z = backend.to_device(z, self.device)

    def synchronize(self):
        self.backend.synchronize(self.device)

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


def time_breakdown(side, repeats, warmup):
    """Where npsn's iteration time goes: seconds per iteration in three disjoint parts (medians).

    * ``matrix_products``: inside the convolution kernels (:mod:`npsn.nn.conv`'s gather/scatter
      forward and backward) minus the copies below, i.e. the im2col/col2im matrix products
      (BLAS) and their free reshapes;
    * ``im2col_col2im``: :func:`~npsn.nn.im2col.im2col`, :func:`~npsn.nn.im2col.col2im` and the weight
      reshapes :func:`~npsn.nn.conv.weight_rows` / :func:`~npsn.nn.conv.weight_from_rows`;
    * ``other``: everything else (activations, BatchNorm, spectral normalization, Adam, losses,
      the dense layers, Python).

    The kernels are wrapped (module attributes, restored afterwards) to read the clock around
    each call; the wrapping itself costs microseconds per call.
    """
    from npsn.nn import conv

    spent = {"kernels": 0.0, "copies": 0.0}
    originals = {}

    def wrap(name, bucket):
        function = originals[name] = getattr(conv, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[bucket] += time.perf_counter() - start

        setattr(conv, name, timed)

    for name in ("gather_forward", "gather_backward", "scatter_forward", "scatter_backward"):
        wrap(name, "kernels")
    for name in ("im2col", "col2im", "weight_rows", "weight_from_rows"):
        wrap(name, "copies")
    parts = {"iteration": [], "matrix_products": [], "im2col_col2im": [], "other": []}
    try:
        for i in range(warmup + repeats):
            spent.update(kernels=0.0, copies=0.0)
            side.synchronize()
            start = time.perf_counter()
            side.iteration()
            side.synchronize()
            total = time.perf_counter() - start
            if i >= warmup:
                parts["iteration"].append(total)
                parts["matrix_products"].append(spent["kernels"] - spent["copies"])
                parts["im2col_col2im"].append(spent["copies"])
                parts["other"].append(total - spent["kernels"])
    finally:
        for name, function in originals.items():
            setattr(conv, name, function)
    return {part: statistics.median(values) for part, values in parts.items()}


# ---------------------------------------------------------------------------------------------- torch side
def torch_model_from_npsn(model):
    """The PyTorch module with the architecture of the npsn ``model`` (a module tree of npsn layers).

    Every npsn layer maps to the PyTorch layer it documents itself as; layout layers become
    ``nn.Identity`` (torch stays NCHW throughout) or ``nn.Unflatten``/``nn.Flatten``. Children keep
    their names, so the ``state_dict`` keys are npsn's. Weights are PyTorch's defaults until loaded.
    """
    import torch
    from torch import nn

    import npsn

    class Residual(nn.Module):
        """y = residual(x) + shortcut(x) (identity when shortcut is None), npsn.Residual's children."""

        def __init__(self, residual, shortcut):
            super().__init__()
            self.residual = residual
            self.shortcut = shortcut

        def forward(self, x):
            return self.residual(x) + (x if self.shortcut is None else self.shortcut(x))

    class GlobalSumPool2d(nn.Module):
        """(N, C, H, W) -> (N, C), the sum over positions."""

        def forward(self, x):
            return x.sum(dim=(2, 3))

    def conv(m, cls):
        return cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)

    def batchnorm(m, cls):
        return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine)

    builders = {
        npsn.Sequential: lambda m: nn.Sequential(*(convert(child) for child in m)),
        npsn.Residual: lambda m: Residual(convert(m.residual), None if m.shortcut is None else convert(m.shortcut)),
        npsn.SpectralNorm: lambda m: nn.utils.spectral_norm(convert(m.module), n_power_iterations=m.n_power_iterations,
                                                            eps=m.eps, dim=m.dim),
        npsn.Linear: lambda m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
        npsn.Conv2d: lambda m: conv(m, nn.Conv2d),
        npsn.ConvTranspose2d: lambda m: conv(m, nn.ConvTranspose2d),
        npsn.BatchNorm1d: lambda m: batchnorm(m, nn.BatchNorm1d),
        npsn.BatchNorm2d: lambda m: batchnorm(m, nn.BatchNorm2d),
        npsn.ReLU: lambda m: nn.ReLU(),
        npsn.LeakyReLU: lambda m: nn.LeakyReLU(m.negative_slope),
        npsn.Tanh: lambda m: nn.Tanh(),
        npsn.Sigmoid: lambda m: nn.Sigmoid(),
        npsn.Upsample: lambda m: nn.Upsample(scale_factor=m.s, mode="nearest"),
        npsn.AvgPool2d: lambda m: nn.AvgPool2d(m.k),
        npsn.GlobalSumPool2d: lambda m: GlobalSumPool2d(),
        npsn.Reshape: lambda m: nn.Unflatten(1, m.chw),
        npsn.Flatten: lambda m: nn.Flatten(),
        npsn.ToChannelsLast: lambda m: nn.Identity(),
        npsn.ToChannelsFirst: lambda m: nn.Identity(),
    }

    def convert(m):
        build = builders.get(type(m))
        if build is None:
            raise TypeError(f"no PyTorch counterpart for npsn layer {type(m).__name__}")
        return build(m)

    with torch.no_grad():
        return convert(model)


def load_npsn_weights(torch_model, npsn_model):
    """Copy npsn's ``state_dict`` (parameters, SN's u and v, BN's statistics) into ``torch_model``, strictly."""
    import torch

    from npsn import backend

    state = {k: torch.from_numpy(backend.to_numpy(v).copy()) for k, v in npsn_model.state_dict().items()}
    torch_model.load_state_dict(state, strict=True)
    return torch_model


class TorchSide:
    """The same training step in PyTorch: the same models, data stream, noise, loss and optimizer.

    Real batches come from the same seeded :class:`~npsn.data.cifar10.MinibatchStream` and z from the same
    seeded generator as the Trainer's, so from the same weights both sides see the same batches.
    """

    name = "torch"

    def __init__(self, trainer, images, x, z):
        import numpy as np
        import torch

        from npsn.data.cifar10 import MinibatchStream

        c = trainer.config
        self.torch, self.np, self.config = torch, np, c
        self.dev = torch.device("cuda" if c.device == "gpu" else "cpu")
        self.G = load_npsn_weights(torch_model_from_npsn(trainer.G), trainer.G).to(self.dev).train()
        self.D = load_npsn_weights(torch_model_from_npsn(trainer.D), trainer.D).to(self.dev).train()
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=(c.beta1, c.beta2))
        self.learning_rate = trainer.learning_rate  # depends on the config only
        self.images = torch.from_numpy(images).to(self.dev)
        self.stream = MinibatchStream(len(images), c.batch_size, c.seed)
        self.noise = np.random.default_rng([c.seed, 2])
        self.x = torch.from_numpy(x).to(self.dev)
        self.z = torch.from_numpy(z).to(self.dev)
        self.iteration_count = 0

    def synchronize(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def real_batch(self):
        idx = self.torch.from_numpy(self.stream.next_indices()).to(self.dev)
        # x = pixel / 127.5 - 1
        return self.images[idx].float() / 127.5 - 1

    def sample_z(self, n):
        return self.torch.from_numpy(self.noise.standard_normal((n, self.config.z_dim)).astype(self.np.float32)).to(self.dev)

    def d_forward(self):
        self.D(self.x)

    def g_forward(self):
        self.G(self.z)

    def d_update(self):
        torch, b = self.torch, self.config.batch_size
        x_real = self.real_batch()
        with torch.no_grad():
            x_fake = self.G(self.sample_z(b))
        logits = self.D(torch.cat([x_real, x_fake]))
        # hinge: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))
        loss = torch.relu(1 - logits[:b]).mean() + torch.relu(1 + logits[b:]).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.detach()

    def g_update(self):
        x_fake = self.G(self.sample_z(self.config.batch_size))
        self.D.requires_grad_(False)
        try:
            # hinge: -mean(D(G(z)))
            loss = -self.D(x_fake).mean()
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            self.D.requires_grad_(True)
        self.opt_g.step()
        return loss.detach()

    def iteration(self):
        lr = self.learning_rate(self.iteration_count)
        for group in self.opt_d.param_groups + self.opt_g.param_groups:
            group["lr"] = lr
        loss_d = self.d_update()
        loss_g = self.g_update()
        self.iteration_count += 1
        loss_d, loss_g = self.torch.stack([loss_d, loss_g]).tolist()  # one device-to-host copy, as the Trainer
        if not (self.np.isfinite(loss_d) and self.np.isfinite(loss_g)):
            raise RuntimeError(f"torch: non-finite loss at iteration {self.iteration_count}")
        return loss_d, loss_g


def import_torch(device, threads):
    """(torch, None) if PyTorch can run the comparison on ``device``, else (None, why not)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"PyTorch is not importable ({exc})"
    if device == "gpu" and not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no CUDA device"
    if device == "gpu":
        # float32 on both sides: no TF32 in cuDNN convolutions or cuBLAS matrix products
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    limit_threads(threads)
    return torch, None


# ---------------------------------------------------------------------------------------------- checks
def relative_error(ours, theirs):
    """max |ours - theirs| / max |theirs| (float64; the plain max difference when theirs is all zero)."""
    import numpy as np

    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {theirs.shape}")
    scale = np.max(np.abs(theirs))
    diff = np.max(np.abs(ours - theirs))
    return float(diff / scale if scale > 0 else diff)


def check_against_torch(ours, theirs, iterations=2):
    """Compare the npsn and torch sides, which must hold the same weights and be in train mode.

    1. float64, on copies of both sides' models (the "same math" check, ~1e-15 when correct): in
       train mode (one power iteration, batch statistics) on the fixed batch, D's output, D's input
       gradient for dL/dD(x) = 1, and G's output.
    2. float32, the models being timed: the same three, then D's and G's outputs in eval mode
       (after the train-mode pass, so that sigma = u^T W v comes from power-iterated u, v: with
       the random initial ones it may be <= 0, where npsn clamps it to eps and torch does not).
    3. float32: ``iterations`` training iterations on each side, from the same weights with the
       same batches: their losses, as max |difference| / max(|torch's loss|, 1).

    All errors are max relative errors (:func:`relative_error`). In float32, D's input gradient
    differs by up to ~1e-2 of its maximum between any two implementations (torch's own float32
    result differs that much from its float64 one): it jumps where a (Leaky)ReLU input crosses 0,
    and rounding moves inputs near 0 across. It is therefore checked in float64 only. Parameters
    are not compared: biases that feed a BatchNorm have an exact gradient of 0, and Adam's first
    step moves them by about lr in the direction of the rounding noise.
    """
    import copy

    import numpy as np

    from npsn import backend

    torch, t = theirs.torch, ours.trainer

    def host(a):
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else backend.to_numpy(a)

    def npsn_pass(G, D, x, z):
        """(D(x), dD(x)/dx summed over the batch, G(z)) of npsn models in train mode, as host arrays."""
        d_out = D(x)
        grad_x = D.backward(t.xp.ones_like(d_out))  # NCHW: D's first layer converts to channels-last
        D.zero_grad()
        return host(d_out), host(grad_x), host(G(z))

    def torch_pass(G, D, x, z):
        """The same for torch models."""
        x = x.clone().requires_grad_(True)
        d_out = D(x)
        d_out.backward(torch.ones_like(d_out))
        D.zero_grad(set_to_none=True)
        with torch.no_grad():
            return host(d_out), host(x.grad), host(G(z))

    names = ("d_output", "d_input_grad", "g_output")
    ours64 = [copy.deepcopy(m).to(dtype=np.float64) for m in (t.G, t.D)]
    theirs64 = [copy.deepcopy(m).double() for m in (theirs.G, theirs.D)]
    values64 = (npsn_pass(*ours64, ours.x.astype(np.float64), ours.z.astype(np.float64)),
                torch_pass(*theirs64, theirs.x.double(), theirs.z.double()))
    float64 = {name: relative_error(a, b) for name, a, b in zip(names, *values64)}
    del ours64, theirs64, values64
    values32 = (npsn_pass(t.G, t.D, ours.x, ours.z), torch_pass(theirs.G, theirs.D, theirs.x, theirs.z))
    float32 = {name: relative_error(a, b) for name, a, b in zip(names, *values32)}
    with torch.no_grad():
        for m in (t.G, t.D, theirs.G, theirs.D):
            m.eval()
        float32["eval_d_output"] = relative_error(host(t.D(ours.x)), host(theirs.D(theirs.x)))
        float32["eval_g_output"] = relative_error(host(t.G(ours.z)), host(theirs.G(theirs.z)))
        for m in (t.G, t.D, theirs.G, theirs.D):
            m.train()
    losses = {"npsn": [list(ours.iteration()) for _ in range(iterations)],
              "torch": [list(theirs.iteration()) for _ in range(iterations)]}
    loss_error = max(abs(a - b) / max(abs(b), 1.0) for pair in zip(*losses.values()) for a, b in zip(*pair))
    ok = (max(float64.values()) < CHECK_FLOAT64
          and all(error < CHECK_FLOAT32 for name, error in float32.items() if name != "d_input_grad")
          and loss_error < CHECK_LOSSES)
    return {"max_rel_error_float64": float64, "max_rel_error_float32": float32, "losses": losses,
            "loss_error": loss_error, "ok": ok}


# ---------------------------------------------------------------------------------------------- timing
def time_call(side, phase):
    """(seconds, minor page faults) of one call of ``phase``, the device synchronized before each clock read."""
    fn = getattr(side, phase)
    side.synchronize()
    faults = minor_faults()
    start = time.perf_counter()
    fn()
    side.synchronize()
    return time.perf_counter() - start, minor_faults() - faults


def summarize(samples):
    seconds = [s for s, _ in samples]
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "times_s": [round(s, 5) for s in seconds],
            "minor_faults_median": statistics.median(f for _, f in samples)}


def time_phases(sides, repeats, warmup, settle, progress):
    """{phase: {side name: summary}}: per phase, warm-up calls, then ``repeats`` calls alternating the sides.

    With two sides, each timed call waits ``settle`` seconds first: the other library's idle
    worker threads spin for a while after its last call (OpenBLAS for about 0.1 s) and would
    compete for the cores.
    """
    results = {}
    settle = settle if len(sides) > 1 else 0
    for phase, label in PHASES:
        for _ in range(warmup):
            for side in sides:
                time_call(side, phase)
        samples = {side.name: [] for side in sides}
        for r in range(repeats):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                time.sleep(settle)
                samples[side.name].append(time_call(side, phase))
        results[phase] = {name: summarize(s) for name, s in samples.items()}
        progress(f"  {label}: " + ", ".join(f"{name} {results[phase][name]['median_s']:.3f} s" for name in samples))
    return results


# ---------------------------------------------------------------------------------------------- memory probes
def probe_memory(args):
    """Run in a fresh process: build one side of one model, train PROBE_ITERATIONS iterations, print peak memory."""
    model, side_name = args.models[0], args.probe_memory
    import numpy as np  # noqa: F401  (the baseline includes the libraries)

    import npsn  # noqa: F401
    torch = None
    if side_name == "torch":
        torch, why_not = import_torch(args.device, args.threads)
        if torch is None:
            raise RuntimeError(why_not)
    limit_threads(args.threads)
    reset_peak_rss()
    baseline = current_rss()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, images = make_trainer(args, model, out_dir)
        x, z = fixed_inputs(trainer, images)
        if side_name == "npsn":
            side = NpsnSide(trainer, x, z)
        else:
            side = TorchSide(trainer, images, x, z)
            trainer.G = trainer.D = trainer.opt_g = trainer.opt_d = None  # release npsn's models
            if args.device == "gpu":
                torch.cuda.reset_peak_memory_stats()
        for _ in range(PROBE_ITERATIONS):
            side.iteration()
        side.synchronize()
    result = {"host_rss_baseline": baseline, "host_rss_peak": peak_rss()}
    if args.device == "gpu":
        if side_name == "npsn":
            from npsn import backend
            pool = backend.xp_for("gpu").get_default_memory_pool()
            result["device_pool_bytes"] = pool.total_bytes()  # the pool keeps freed blocks: ~ its high-water mark
        else:
            result["device_max_allocated"] = torch.cuda.max_memory_allocated()
            result["device_max_reserved"] = torch.cuda.max_memory_reserved()
    print(json.dumps(result))


def run_probe(args, model, side_name):
    """Peak memory of one side of one model, measured in a fresh process (a dict, or {"error": ...})."""
    command = [sys.executable, os.path.abspath(__file__), "--probe-memory", side_name, "--models", model,
               "--device", args.device, "--batch-size", str(args.batch_size), "--malloc", args.malloc,
               "--seed", str(args.seed), "--json-only"]
    for option, value in (("--threads", args.threads), ("--g-ch", args.g_ch), ("--d-ch", args.d_ch)):
        if value is not None:
            command += [option, str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- report
def environment_report(args, torch):
    import numpy as np

    import npsn
    from npsn.utils import threads as npsn_threads

    def git(*command):
        try:
            return subprocess.run(["git", "-C", REPO, *command], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": np.__version__, "npsn": npsn.__version__}
    if torch is not None:
        versions["torch"] = torch.__version__
    if args.device == "gpu":
        from npsn import backend
        cupy = backend.xp_for("gpu")
        versions["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    else:
        gpu_name = None
    return {
        "device": args.device, "gpu": gpu_name, "cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "batch_size": args.batch_size, "versions": versions, "settle_s": args.settle,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git": {"commit": git("rev-parse", "--short", "HEAD"), "npsn_modified": bool(git("status", "--porcelain", "--", "npsn"))},
        "threads": {"requested": args.threads, "pools": thread_pools(), "npsn": npsn_threads.num_threads(),
                    "blas_environment": {k: os.environ.get(k) for k in BLAS_ENVIRONMENT},
                    "torch": torch.get_num_threads() if torch is not None else None},
        "malloc": {"mode": args.malloc if is_glibc() else "unchanged (not glibc)",
                   "environment": {k: os.environ[k] for k in MALLOC_VARIABLES if k in os.environ},
                   "freed_64MiB_block_reused": freed_memory_is_reused()},
    }


def format_report(env, results):
    """The human-readable tables."""
    pools = ", ".join(f"{p['library']} {p.get('version') or ''} ({p['threads']} threads)" for p in env["threads"]["pools"])
    malloc = env["malloc"]
    settings = " ".join(f"{k}={v}" for k, v in malloc["environment"].items()) or "glibc defaults"
    lines = [
        f"device {env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}, cpu {env['cpu']} "
        f"({env['cpus_usable']} usable), batch {env['batch_size']}, load average at start "
        + " ".join(f"{v:.2f}" for v in env["load_average_at_start"] or ()),
        "versions " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f", git {env['git']['commit']}{' (npsn/ modified)' if env['git']['npsn_modified'] else ''}",
        f"threads: requested {env['threads']['requested']}; {pools}"
        + (f"; torch {env['threads']['torch']}" if env["threads"]["torch"] is not None else ""),
        f"malloc: {malloc['mode']} ({settings}); freed 64 MiB block reused without page faults: "
        f"{'yes' if malloc['freed_64MiB_block_reused'] else 'no'}",
    ]
    for model, r in results.items():
        cfg = r["config"]
        lines += ["", f"== {model}: G ch {cfg['g_ch']} ({cfg['g_parameters'] / 1e6:.2f} M parameters), "
                  f"D ch {cfg['d_ch']} ({cfg['d_parameters'] / 1e6:.2f} M), {cfg['loss']} loss, Adam lr {cfg['lr']} "
                  f"betas ({cfg['beta1']}, {cfg['beta2']}); repeats {r['repeats']}, warm-up {r['warmup']}",
                  f"   iteration = 1 D update + 1 G update (n_dis = 1 here; the {model} preset trains with "
                  f"n_dis = {cfg['preset_n_dis']})"]
        if "check" in r:
            c = r["check"]
            lines += ["   check against torch, max relative error: float64 "
                      + ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel_error_float64"].items()),
                      "   float32 " + ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel_error_float32"].items())
                      + " (D's input gradient is kink-sensitive in float32)",
                      f"   losses of {len(c['losses']['npsn'])} training iterations from the same weights and batches "
                      f"(float32): max relative difference {c['loss_error']:.1e}"
                      + ("   -> agree" if c["ok"] else "   ** MISMATCH: see check_against_torch **")]
        elif "compare_skipped" in r:
            lines.append(f"   torch comparison skipped: {r['compare_skipped']}")
        sides = list(next(iter(r["phases"].values())))
        header = f"   {'phase':<24}" + "".join(f"{s + ' median [min, max]':>32}" for s in sides)
        lines += [header + (f"{'npsn/torch':>12}" if "torch" in sides else ""), "   " + "-" * (len(header) + 9)]
        for phase, label in PHASES:
            p = r["phases"][phase]
            row = f"   {label:<24}" + "".join(
                f"{p[s]['median_s']:>12.3f} s [{p[s]['min_s']:.3f}, {p[s]['max_s']:.3f}]".rjust(32) for s in sides)
            if "torch" in sides:
                row += f"{r['ratios'][phase]:>12.2f}"
            lines.append(row)
        if "breakdown" in r:
            b = r["breakdown"]
            text = (f"   npsn iteration {b['iteration']:.3f} s = convolution matrix products {b['matrix_products']:.3f} s"
                    f" + im2col/col2im {b['im2col_col2im']:.3f} s + other {b['other']:.3f} s (medians, separate run)")
            if "torch" in sides:
                torch_iteration = r["phases"]["iteration"]["torch"]["median_s"]
                text += f"; the products alone are {b['matrix_products'] / torch_iteration:.2f} x torch's iteration"
            lines.append(text)
        for side, m in r.get("memory", {}).items():
            if "error" in m:
                lines.append(f"   peak memory {side}: probe failed: {m['error']}")
                continue
            text = (f"   peak memory {side} (fresh process, {PROBE_ITERATIONS} iterations): host RSS "
                    f"{m['host_rss_peak'] / MIB:.0f} MiB (+{(m['host_rss_peak'] - m['host_rss_baseline']) / MIB:.0f} "
                    "over the process after imports)")
            if "device_pool_bytes" in m:
                text += f"; CuPy pool {m['device_pool_bytes'] / MIB:.0f} MiB"
            if "device_max_allocated" in m:
                text += (f"; CUDA max allocated {m['device_max_allocated'] / MIB:.0f} MiB, "
                         f"reserved {m['device_max_reserved'] / MIB:.0f} MiB")
            lines.append(text)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def benchmark_model(args, model, torch, progress):
    """Build, check, time and (optionally) probe one model; returns its results dict."""
    from npsn.gan.models import DEFAULT_WIDTHS
    from npsn.gan.trainer import PRESETS

    with tempfile.TemporaryDirectory() as out_dir:
        trainer, images = make_trainer(args, model, out_dir)
        x, z = fixed_inputs(trainer, images)
        c = trainer.config
        result = {"config": {"g_ch": c.g_ch or DEFAULT_WIDTHS[model][0], "d_ch": c.d_ch or DEFAULT_WIDTHS[model][1],
                             "loss": c.loss, "lr": c.lr, "beta1": c.beta1, "beta2": c.beta2,
                             "preset_n_dis": PRESETS[model]["n_dis"], "n_dis": 1,
                             "g_parameters": sum(p.data.size for p in trainer.G.parameters()),
                             "d_parameters": sum(p.data.size for p in trainer.D.parameters())}}
        sides, theirs = [NpsnSide(trainer, x, z)], None
        if torch is not None:
            theirs = TorchSide(trainer, images, x, z)
            progress(f"{model}: checking npsn against torch")
            result["check"] = check_against_torch(sides[0], theirs)
            sides.append(theirs)
        repeats, warmup = count_for(args.repeats, model, 10), count_for(args.warmup, model, 2)
        result.update(repeats=repeats, warmup=warmup)
        progress(f"{model}: timing ({repeats} repeats after {warmup} warm-up calls per phase)")
        result["phases"] = time_phases(sides, repeats, warmup, args.settle, progress)
        if torch is not None:
            result["ratios"] = {phase: r["npsn"]["median_s"] / r["torch"]["median_s"]
                                for phase, r in result["phases"].items()}
        if args.breakdown:
            progress(f"{model}: npsn time breakdown")
            result["breakdown"] = time_breakdown(sides[0], repeats, warmup)
        del sides, trainer, theirs
    gc.collect()
    if args.memory == "probe":
        progress(f"{model}: peak memory probes")
        result["memory"] = {side: run_probe(args, model, side)
                            for side in (["npsn", "torch"] if torch is not None else ["npsn"])}
    return result


def run(args):
    """The whole benchmark (after :func:`configure_process`); prints the tables and returns the JSON record."""
    def progress(text):
        if not args.json_only:
            print(text, file=sys.stderr, flush=True)

    import numpy as np  # noqa: F401

    import npsn  # noqa: F401
    torch, why_not = (None, "not requested") if args.compare == "none" else import_torch(args.device, args.threads)
    limit_threads(args.threads)
    if args.device == "gpu":
        from npsn import backend
        backend.check_device("gpu")
    env = environment_report(args, torch)
    results = {}
    for model in args.models:
        results[model] = benchmark_model(args, model, torch, progress)
        if torch is None and args.compare == "torch":
            results[model]["compare_skipped"] = why_not
    env["malloc"]["freed_64MiB_block_reused_after"] = freed_memory_is_reused()
    env["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    record = dict(env, benchmark="npsn", compare=args.compare if torch is not None else "none",
                  host_peak_rss_this_process=peak_rss(), models=results)
    if not args.json_only:
        print(format_report(env, results))
    print(json.dumps(record))
    return record


def main(argv=None):
    args = parse_args(argv)
    configure_process(args)
    if args.probe_memory:
        probe_memory(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
