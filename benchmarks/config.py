"""The settings of one benchmark run, and the parsers of their command-line forms.

Imports nothing but the standard library: ``scripts/bench.py`` builds the config and sets the
thread variables (:func:`set_thread_environment`) before anything imports NumPy.
"""
import argparse
import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

MODELS = ("cnn", "resnet")
DEVICES = ("cpu", "gpu")
COMPARE = ("none", "torch")
MALLOC = ("no-trim", "default")  # npsn.utils.allocator.keep_freed_memory(), or glibc's own behaviour
MEMORY = ("probe", "off")
SIDES = ("npsn", "torch")
SN_MODES = ("matrix", "operator")  # npsn.nn.spectral_norm.SN_MODES (repeated: this module imports no NumPy; a test checks)
DEFAULT_REPEATS, DEFAULT_WARMUP = 10, 2
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository's root


@dataclasses.dataclass
class BenchConfig:
    """Every setting of a run (the command line's flags; see ``scripts/bench.py --help``).

    ``repeats`` and ``warmup`` map a model name, or None for every model, to a count
    (:func:`per_model`); ``probe_memory`` is set only in the fresh process of a memory probe.
    """

    device: str = "cpu"
    models: Sequence[str] = MODELS
    batch_size: int = 64
    repeats: Dict[Optional[str], int] = dataclasses.field(default_factory=lambda: {None: DEFAULT_REPEATS})
    warmup: Dict[Optional[str], int] = dataclasses.field(default_factory=lambda: {None: DEFAULT_WARMUP})
    compare: str = "none"
    settle: float = 0.2
    threads: Optional[int] = None
    malloc: str = "no-trim"
    memory: str = "probe"
    breakdown: bool = False
    g_ch: Optional[int] = None
    d_ch: Optional[int] = None
    widths: Optional[Sequence[Tuple[int, int]]] = None  # several (g_ch, d_ch) in one run (--widths)
    seed: int = 0
    sn_mode: str = "matrix"
    json_only: bool = False
    probe_memory: Optional[str] = None

    def __post_init__(self):
        self.models = list(self.models)
        for name, value, choices in (("device", self.device, DEVICES), ("compare", self.compare, COMPARE),
                                     ("malloc", self.malloc, MALLOC), ("memory", self.memory, MEMORY),
                                     ("sn_mode", self.sn_mode, SN_MODES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.sn_mode != "matrix" and self.compare == "torch":
            raise ValueError("--compare torch needs --sn-mode matrix: PyTorch's spectral norm has no operator mode")
        if not self.models or any(m not in MODELS for m in self.models):
            raise ValueError(f"models must be a non-empty subset of {', '.join(MODELS)}, got {self.models}")
        if self.batch_size < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError("batch_size and threads must be positive")
        if self.widths is not None and (self.g_ch is not None or self.d_ch is not None):
            raise ValueError("--widths gives G's and D's widths: give it, or --g-ch/--d-ch, not both")
        if self.probe_memory not in (None, *SIDES):
            raise ValueError(f"probe_memory must be one of {', '.join(SIDES)}, got {self.probe_memory!r}")

    def runs(self):
        """``(key, config, model)`` for each model, and with ``widths`` each width: what one bench run times.

        The key names the result: the model (``"cnn"``), or with ``widths`` the model and its widths
        (``"cnn@128/16"``); each config has one width and no ``widths``.
        """
        if self.widths is None:
            return [(model, self, model) for model in self.models]
        return [(f"{model}@{g}/{d}", dataclasses.replace(self, g_ch=g, d_ch=d, widths=None), model)
                for g, d in self.widths for model in self.models]

    def repeats_for(self, model):
        """Timed calls per phase for ``model``."""
        return count_for(self.repeats, model, DEFAULT_REPEATS)

    def warmup_for(self, model):
        """Untimed calls per phase before them."""
        return count_for(self.warmup, model, DEFAULT_WARMUP)

    def probe_arguments(self, model, side):
        """The command-line flags that make ``scripts/bench.py`` probe ``side``'s memory on ``model`` alone."""
        flags = ["--probe-memory", side, "--models", model, "--device", self.device,
                 "--batch-size", str(self.batch_size), "--malloc", self.malloc, "--seed", str(self.seed),
                 "--sn-mode", self.sn_mode, "--json-only"]
        for option, value in (("--threads", self.threads), ("--g-ch", self.g_ch), ("--d-ch", self.d_ch)):
            if value is not None:
                flags += [option, str(value)]
        return flags


def per_model(text):
    """``"10"`` -> {None: 10}; ``"cnn=10,resnet=3"`` -> {"cnn": 10, "resnet": 3} (for --repeats, --warmup).

    >>> per_model("4,resnet=1")
    {None: 4, 'resnet': 1}
    """
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
    """``"cnn,resnet"`` -> ["cnn", "resnet"] (for --models)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--models takes a comma-separated subset of {','.join(MODELS)}, got {text!r}")
    return names


def width_list(text):
    """``"128/16,256/32"`` -> [(128, 16), (256, 32)] (for --widths: G's and D's base widths).

    >>> width_list("128/16, 512/64")
    [(128, 16), (512, 64)]
    """
    widths = []
    for part in text.split(","):
        g, _, d = part.strip().partition("/")
        if not (g.isascii() and g.isdigit() and d.isascii() and d.isdigit()) or int(g) < 1 or int(d) < 1:
            raise argparse.ArgumentTypeError(f"--widths takes G/D pairs of positive widths, e.g. 128/16,256/32; "
                                             f"got {text!r}")
        widths.append((int(g), int(d)))
    return widths


def count_for(values, model, default):
    """The count of ``model`` from a :func:`per_model` dict: its own, else the one given for all, else ``default``."""
    return values.get(model, values.get(None, default))


def set_thread_environment(threads):
    """Set OMP/OPENBLAS/MKL_NUM_THREADS to ``threads`` (None: leave them). Must run before NumPy is imported."""
    if threads is not None:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)


def parse_args(argv=None, description=None):
    """``scripts/bench.py``'s command line (``description``: its help text) as a :class:`BenchConfig`."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--models", type=model_list, default=list(MODELS), help="comma-separated (default: cnn,resnet)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=per_model, default={None: DEFAULT_REPEATS}, help="timed calls per phase: N or cnn=N,resnet=M")
    p.add_argument("--warmup", type=per_model, default={None: DEFAULT_WARMUP}, help="untimed calls per phase first: N or cnn=N,...")
    p.add_argument("--compare", choices=COMPARE, default="none")
    p.add_argument("--settle", type=float, default=0.2,
                   help="seconds of idle before each timed call when comparing (lets spinning threads sleep)")
    p.add_argument("--threads", type=int, help="BLAS/OpenMP/PyTorch threads for both sides (default: libraries' own)")
    p.add_argument("--malloc", choices=MALLOC, default="no-trim", help="glibc allocator setting")
    p.add_argument("--memory", choices=MEMORY, default="probe", help="peak memory in fresh processes")
    p.add_argument("--breakdown", action="store_true",
                   help="also split npsn's iteration time into convolution matrix products, im2col/col2im and the rest")
    p.add_argument("--g-ch", type=int, help="generator width (default: the paper's; small values for smoke tests)")
    p.add_argument("--d-ch", type=int, help="discriminator width (default: the paper's)")
    p.add_argument("--widths", type=width_list,
                   help="several G/D widths in one run, e.g. 128/16,256/32,512/64 (each timed as with --g-ch/--d-ch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sn-mode", choices=SN_MODES, default="matrix",
                   help="D's spectral norm: matrix (the paper's) or operator (the convolution's operator norm)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.add_argument("--probe-memory", choices=SIDES, help=argparse.SUPPRESS)  # internal: one memory probe
    args = p.parse_args(argv)
    try:
        return BenchConfig(**vars(args))
    except ValueError as exc:
        p.error(str(exc))
