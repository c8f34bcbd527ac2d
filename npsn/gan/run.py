"""A training run's life, from its options to its last checkpoint: :class:`Run`.

    from npsn.gan.run import Run

    with Run.create({"preset": "cnn", "iterations": 1000}, data="data/cifar-10-python.tar.gz") as run:
        loss_d, loss_g = run.train()  # checkpoints on time, at the end, and on Ctrl-C
    with Run.resume(run.out_dir, {"iterations": 2000}) as run:
        run.train()

``scripts/train_cifar.py`` turns its command line into these calls and prints what they return and
raise. Opening a run (:meth:`Run.create`, :meth:`Run.resume`) takes three steps, in this order, and
writes nothing before the third:

1. the settings: a preset's (a new run) or the run's own config.json (a resumed one), with the
   given ones over them, every value checked (:func:`new_run_config`, :func:`resumed_run_config`:
   a resumed run may change only ``RESUMABLE_OPTIONS``, and its checkpoint must be of its
   config.json); the run directory and its files; the device; where the data is;
2. the data, loaded and checked against the settings, and the run's state built (a
   :class:`~npsn.gan.trainer.Trainer`; a resumed one loaded from its checkpoint and checked); in a
   data-parallel run the ranks then compare, and the first problem of any rank stops all of them;
3. the run directory taken (:func:`~npsn.gan.rundir.start_writing`: one process writes a run), its
   config.json written.

Invariant: an open :class:`Run` holds the lock on its run directory, from the end of create or
resume until :meth:`Run.close` (the end of its ``with`` block, or of the process).

Every failure is one of three exceptions, each with a one-line message that says what to do next:
:class:`RunError` (the run was refused before training started: a bad option, run directory, run
file, data or device, or another process on the run), :class:`RunInterrupted` (Ctrl-C, SIGTERM) and
:class:`RunFailed` (divergence, out of memory, a failed write); the last two name the last good
checkpoint and how to continue (:func:`last_good`, :func:`~npsn.gan.rundir.how_to_continue`). The
messages name the options of ``scripts/train_cifar.py`` (:func:`flag`).

Who trains a run is its *processes*: :class:`OneProcess` (the default), or
:class:`npsn.distributed.launch.Ranks`, the ranks of a data-parallel run, with the same methods
(npsn.distributed builds on npsn.gan, so npsn.gan only describes what it needs of them).
"""
import contextlib
import dataclasses
import os
import signal
import time

from npsn import backend
from npsn.backend.threads import ThreadsError, environment_threads
from npsn.data.cifar10 import CIFAR10Error, download_cifar10, load_cifar10, load_label_names
from npsn.gan.rundir import (RunDirError, check_creatable, check_new_run_dir, how_to_continue, new_run_dir,
                             read_checkpoint, read_log, recorded_run, start_writing)
from npsn.gan.trainer import (LEGACY_FIELDS, PRESET_SOURCES, PRESETS, RESUMABLE_OPTIONS, Trainer, TrainConfig,
                              TrainingDiverged, config_problems, preset_config, preset_description)
from npsn.utils.allocator import keep_freed_memory
from npsn.utils.console import notice, one_line

COMMAND = "python scripts/train_cifar.py"  # the command the advice in the messages names
CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))  # what a run's settings may give
SWITCHES = {"num_classes": "--conditional"}  # settings given by a command-line option without a value


class RunError(Exception):
    """The run was refused before training started (a bad option, run directory, run file, data or device,
    or another process on the run): nothing of it was written. The message is one line that names the
    option or file and says what to do."""


class RunStopped(Exception):
    """Training stopped before its last iteration; the message is one line: where the run stands and how to go on."""


class RunInterrupted(RunStopped):
    """Ctrl-C or SIGTERM (in a data-parallel run, a stop any rank asked for, honoured by every rank after the
    same iteration): a checkpoint of the last complete iteration is written, if the signal left time for it."""


class RunFailed(RunStopped):
    """Training diverged, ran out of memory, or a write of the run failed.

    ``local`` is True when only this process may have seen it (out of memory, a failed write): the
    other ranks of a data-parallel run must then be stopped (``processes.stop_all``). A divergence
    is seen by every rank (the global losses), and is not local.
    """

    def __init__(self, message, local=False):
        super().__init__(message)
        self.local = local


# What the checks of steps 1 and 2 raise: each message is one line for the user.
REFUSALS = (RunError, RunDirError, CIFAR10Error, backend.DeviceError, ThreadsError)


def flag(name):
    """The command-line option of a setting: what the messages call it.

    >>> flag("batch_size"), flag("d_norm"), flag("num_classes")
    ('--batch-size', '--d-norm', '--conditional')
    """
    return SWITCHES.get(name, "--" + name.replace("_", "-"))


def check_values(config, given, source):
    """RunError for the first invalid value of ``config``: named by its option when it was given (a name in
    ``given``), else by ``source``, where it came from ("the preset", a config.json)."""
    for name, message in config_problems(config):
        if name in given:
            raise RunError(f"argument {flag(name)}: {message}")
        raise RunError(f"{source}: {name} {message}; correct that file, or give {flag(name)}")


def given_settings(settings):
    """``settings`` without its None values (None: "the preset's, or the resumed run's"); ValueError for a
    name that is not a setting (:data:`CONFIG_FIELDS`)."""
    unknown = sorted(set(settings or {}) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}: a run's settings are {', '.join(CONFIG_FIELDS)}")
    return {name: value for name, value in (settings or {}).items() if value is not None}


# ---------------------------------------------------------------- step 1: the settings, checked

def new_run_config(settings, out=None):
    """``(config, out_dir)`` of a new run, every value checked; nothing is written.

    Args:
        settings: {setting: value} over the preset's values; ``preset`` names the preset (default
            cnn, or the legacy preset of ``model`` when only it is given: cnn, resnet).
        out: the run directory, which must be new or empty; None: ``runs/<preset>-<date>-<time>``, a
            base name that :meth:`Run.create` makes unique (-2, -3, ...) when it takes the folder.
    Raises:
        RunError: an invalid value, or --sn-mode without SN (--no-sn, --d-norm other than sn); RunDirError: ``out`` cannot be the run's.
    """
    given = given_settings(settings)
    preset = given.pop("preset", None)
    if preset is None:  # earlier npsn: --model alone chose its preset
        preset = given["model"] if given.get("model") in PRESETS else "cnn"
    if given.get("d_norm", "sn") != "sn" and "sn_mode" in given:
        off = "--no-sn" if given["d_norm"] == "none" else f"--d-norm {given['d_norm']}"
        raise RunError(f"argument --sn-mode: it chooses how D's spectral normalization measures sigma, and "
                       f"{off} turns that off; give one of them")
    config = preset_config(preset, **given)
    check_values(config, given, "the preset")
    if out:
        check_new_run_dir(out)
        return config, out
    out = os.path.join("runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_creatable(out, f"the run directory {out}")
    return config, out


def resumed_run_config(recorded, settings):
    """The config of the run to resume: its config.json with the given ``settings`` over it, checked.

    Args:
        recorded: the run, as :func:`~npsn.gan.rundir.recorded_run` found it.
        settings: {setting: value}; only ``RESUMABLE_OPTIONS`` may differ from the run's.
    Raises:
        RunError: config.json has unknown or invalid values, or differs from the checkpoint; a
            setting that cannot change on resume; the run has already trained its iterations.
        RunDirError: a damaged checkpoint.

    A run without a checkpoint (it stopped before its first one) is checked as well, and starts
    again from iteration 0 with these settings.
    """
    given = given_settings(settings)
    run_dir, stored = recorded.run_dir, recorded.values
    config_path = os.path.join(run_dir, "config.json")
    unknown = sorted(set(stored) - set(CONFIG_FIELDS) - set(LEGACY_FIELDS) - {"data", "source"})
    if unknown:
        raise RunError(f"{config_path} has unknown settings {', '.join(unknown)} (damaged, or from another "
                       f"version of npsn); correct that file")
    for name in ("data", "source"):
        if stored.get(name) is not None and not isinstance(stored[name], str):
            raise RunError(f"{config_path} has {name}={stored[name]!r}, which is not text (damaged); correct "
                           f"that file" + (", or give --data PATH" if name == "data" else ""))
    config = TrainConfig.from_dict(stored)
    check_values(config, {}, config_path)
    if not recorded.has_checkpoint:
        return with_resumed_changes(config, given, run_dir, config_path)
    _, meta = read_checkpoint(os.path.join(run_dir, "checkpoint.npz"))
    for name in CONFIG_FIELDS:
        if name not in RESUMABLE_OPTIONS and name in meta["config"] and meta["config"][name] != getattr(config, name):
            raise RunError(f"{config_path} has {name}={getattr(config, name)!r} but the checkpoint was trained "
                           f"with {name}={meta['config'][name]!r}; restore config.json from a copy")
    config = with_resumed_changes(config, given, run_dir, config_path)
    if meta["iteration"] >= config.iterations:
        raise RunError(f"--resume {run_dir}: the run is already at iteration {meta['iteration']} of "
                       f"{config.iterations}; to train longer give --iterations larger than {meta['iteration']}")
    return config


def with_resumed_changes(config, given, run_dir, config_path):
    """The run's ``config`` with the settings ``given`` on resume, which may change only ``RESUMABLE_OPTIONS``."""
    for name, value in given.items():
        if name not in RESUMABLE_OPTIONS and value != getattr(config, name):
            shown = flag(name) if name in SWITCHES else f"{flag(name)} {value}"
            raise RunError(f"{shown}: the run in {run_dir} has {name}={getattr(config, name)}, which cannot "
                           f"change on resume (only {', '.join(flag(n) for n in RESUMABLE_OPTIONS)} can); "
                           f"start a new run with --out to change it")
    config = dataclasses.replace(config, **given)
    check_values(config, given, config_path)
    return config


def data_location(data, download, recorded):
    """Where the training data is: ``data``, else the resumed run's recorded location, else ./data."""
    if data or download or recorded is None:
        return data or "data"
    path = recorded.values.get("data")
    if not path:
        raise RunError(f"{recorded.run_dir}/config.json records no data location (a run of an older npsn): "
                       f"give --data PATH")
    if not os.path.exists(path):
        raise RunError(f"the run's data {path} (recorded in {recorded.run_dir}/config.json) is not there any "
                       f"more: give --data PATH with its new location")
    return path


# ---------------------------------------------------------------- step 2: the data

def load_training_data(path, download=False, conditional=False):
    """``(training images as uint8 NCHW, their labels, the class names or None, the absolute path they came
    from)``, downloading first if asked; the class names (batches.meta) are read for a conditional run only."""
    if download:
        root = path if not path.endswith((".tar.gz", ".tgz")) else os.path.dirname(path) or "."
        path = download_cifar10(root)
    images, labels = load_cifar10(path, "train")
    names = load_label_names(path) if conditional else None
    return images, labels, names, os.path.abspath(path)


def check_data(config, images, names, data):
    """RunError when the data cannot train ``config``: another number of classes, fewer images than a batch
    or than SWD compares."""
    if config.num_classes and config.num_classes != len(names):
        raise RunError(f"the run has {config.num_classes} classes but {data} names {len(names)}")
    if config.batch_size > len(images):
        raise RunError(f"argument --batch-size: {config.batch_size} is more than the {len(images)} training images")
    if config.eval_every and config.eval_images > len(images):
        raise RunError(f"argument --eval-images: {config.eval_images} is more than the {len(images)} training "
                       f"images SWD compares with; give at most {len(images)}")


# ---------------------------------------------------------------- who trains the run

def _interrupt(signum, frame):
    raise KeyboardInterrupt


class OneProcess:
    """This process trains the run alone: the default ``processes`` of a :class:`Run`.

    :class:`npsn.distributed.launch.Ranks` has the same attributes and methods for the ranks of a
    data-parallel run; each one here is what it is for a single rank.
    """

    root = True  # this process takes the run directory, writes and prints
    rank_prefix = ""  # what names this process in a message only it prints

    def catch_signals(self):
        """SIGTERM (a job scheduler, ``kill``) stops training as Ctrl-C does: with a checkpoint."""
        signal.signal(signal.SIGTERM, _interrupt)

    def command(self, base):
        """The command line that continues a run trained like this one, from the script's ``base``."""
        return base

    def check(self, config):
        """RunError when these processes cannot train ``config`` (one process trains any)."""

    def place(self, device):
        """Put this process on its part of ``device`` (one process has all of it: nothing to do)."""

    def trainer(self, config, images, out_dir, **options):
        """The run's trainer: a :class:`~npsn.gan.trainer.Trainer` (``options`` are its keyword arguments)."""
        return Trainer(config, images, out_dir, **options)

    def agree(self, problem):
        """The first problem of any process, each having checked the run (a collective): here ``problem``."""
        return problem

    def share(self, value):
        """The root's ``value``, on every process (a collective): here ``value``."""
        return value

    def describe(self, config):
        """A line on how the processes split the run's work, or None."""
        return None

    def stop_all(self, code):
        """Stop every process after a failure only this one saw; returns the exit status ``code``."""
        return code

    def barrier(self):
        """Wait until every process is here (nothing to wait for)."""


# ---------------------------------------------------------------- the run

def last_good(trainer):
    """Which checkpoint of the run is good, in words: what a message after a failure names."""
    if trainer.saved_iteration is None:
        return "no checkpoint has been written yet"
    return f"the last good checkpoint is {trainer.checkpoint_path} (iteration {trainer.saved_iteration})"


class Run:
    """A training run, open in its run directory; open one with :meth:`create` or :meth:`resume`.

    Attributes:
        config: its :class:`~npsn.gan.trainer.TrainConfig`.
        out_dir: its run directory.
        trainer: its :class:`~npsn.gan.trainer.Trainer` (with :class:`~npsn.distributed.launch.Ranks`, a
            :class:`~npsn.distributed.trainer.DistributedTrainer`).
        recorded: what :func:`~npsn.gan.rundir.recorded_run` found (None for a new run).
        data: the absolute path of its training data; ``n_images``: how many images it holds.
        processes: who trains it (:class:`OneProcess`, or the ranks of a data-parallel run).

    Invariant: from the end of create or resume until :meth:`close`, the run holds the lock on its
    directory, whose config.json is written, and its trainer is built (a resumed one at its
    checkpoint's iteration, or at 0 when the run had none).
    """

    def __init__(self, processes=None, command=COMMAND):
        """A run not opened yet: :meth:`create` and :meth:`resume` make one and open it."""
        self.processes = processes or OneProcess()
        self.command = self.processes.command(command)
        self.config = self.out_dir = self.recorded = self.trainer = self.data = self.lock = None
        self.n_images = 0
        self.written = False  # from the claim on, something of the run may be on disk
        self.is_open = False  # from the end of create or resume until close

    @classmethod
    def create(cls, settings=None, out=None, data=None, download=False, processes=None, make_evaluator=None,
               command=COMMAND):
        """Open a new run with ``settings`` over a preset's (:func:`new_run_config`).

        Args:
            settings: {setting: value}, names of :data:`CONFIG_FIELDS` (the command line's options).
            out: its run directory, new or empty (default ``runs/<preset>-<date>-<time>``, made unique).
            data: cifar-10-python.tar.gz or its extracted folder (default ./data).
            download: download the official archive into ``data`` (or ./data) first.
            processes: who trains it: :class:`OneProcess` (default), or :class:`~npsn.distributed.launch.Ranks`.
            make_evaluator: ``(config, images, labels) -> evaluator`` for a run with ``eval_every``
                (:func:`npsn.eval.evaluation.make_evaluator`: npsn.eval builds on npsn.gan, so it is
                passed in); None: no evaluation.
            command: the command line the advice in messages names.
        Returns:
            the open run. Raises :class:`RunError`, or :class:`RunStopped` for a signal or failure while opening.
        """
        run = cls(processes, command)
        run._open(lambda: new_run_config(settings, out), out is not None, data, download, make_evaluator)
        return run

    @classmethod
    def resume(cls, run_dir, settings=None, data=None, download=False, processes=None, make_evaluator=None,
               command=COMMAND):
        """Open the run in ``run_dir`` again, at its checkpoint (at iteration 0 when it stopped before its first).

        ``settings`` may change only ``RESUMABLE_OPTIONS`` (:func:`resumed_run_config`); ``data``
        None reads the data where config.json says it was. The other arguments are :meth:`create`'s.
        """
        run = cls(processes, command)
        run._open(lambda: run._recorded_config(run_dir, settings), True, data, download, make_evaluator)
        return run

    @property
    def from_checkpoint(self):
        """Whether the run continues from a checkpoint (False for a new run, or one started again)."""
        return bool(self.recorded and self.recorded.has_checkpoint)

    # ------------------------------------------------------------ opening: steps 1 and 2, then 3
    def _open(self, settle, named, data, download, make_evaluator):
        """Steps 1-2 on every process, agreed; then step 3. ``settle()`` gives ``(config, out_dir)``; ``named``:
        ``out_dir`` is the run directory itself, not the base of a new name. On failure, the lock is released."""
        try:
            with self._explaining():
                problem = None
                try:
                    self._prepare(settle, data, download, make_evaluator)
                except REFUSALS as exc:
                    problem = str(exc)
                problem = self.processes.agree(problem)  # every process has checked: the first problem stops all
                if problem:
                    raise RunError(problem)
                self._take(named)
        except BaseException:
            self.close()
            raise
        self.is_open = True

    def _recorded_config(self, run_dir, settings):
        self.recorded = recorded_run(run_dir)
        return resumed_run_config(self.recorded, settings), run_dir

    def _prepare(self, settle, data, download, make_evaluator):
        """Steps 1 and 2: everything checked, the data loaded, the trainer built; nothing is written."""
        environment_threads()
        self.config, self.out_dir = config, out_dir = settle()
        if self.from_checkpoint:  # a damaged line other than a torn last one stops here
            read_log(os.path.join(out_dir, "log.jsonl"))
        backend.check_device(config.device)
        path = data_location(data, download, self.recorded)
        images, labels, names, self.data = load_training_data(path, download, conditional=bool(config.num_classes))
        self.n_images = len(images)
        check_data(config, images, names, self.data)
        self.processes.check(config)
        self.processes.place(config.device)
        keep_freed_memory()  # large im2col temporaries: freed memory is kept for reuse, not page-faulted back
        try:
            self.trainer = self.processes.trainer(config, images, out_dir, resume=self.from_checkpoint,
                                                  labels=labels, class_names=names)
        except (KeyError, ValueError, TypeError) as exc:
            raise RunError(f"{os.path.join(out_dir, 'checkpoint.npz')} does not fit the run's config.json "
                           f"({type(exc).__name__}: {one_line(exc)}); restore both from a copy") from None
        if config.eval_every and make_evaluator and self.processes.root:
            self.trainer.evaluator = make_evaluator(config, images, labels)

    def _take(self, named):
        """Step 3: the root takes the run directory (a new one from :func:`~npsn.gan.rundir.new_run_dir`
        unless ``named``) and writes config.json; every process learns the folder, or the root's refusal."""
        self.written = True  # from here on, something of the run may be on disk
        problem, out_dir = None, self.out_dir
        if self.processes.root:
            try:
                if not named:
                    out_dir = new_run_dir(out_dir)
                values = dict(dataclasses.asdict(self.config), data=self.data,
                              source=PRESET_SOURCES.get(self.config.preset, "no preset"))
                self.lock = start_writing(out_dir, "--resume" if self.recorded else "--out",
                                          self.recorded.state if self.recorded else None, values, notice)
            except RunDirError as exc:
                problem = str(exc)
        problem, self.out_dir = self.processes.share((problem, out_dir))
        if problem:
            raise RunError(problem)
        self.trainer.out_dir = self.out_dir

    # ------------------------------------------------------------ the open run
    def describe(self):
        """The run in the lines a command prints at its start: what it trains on what, its preset and
        settings, and where it starts."""
        c = self.config
        kind = f"class-conditional ({c.num_classes} classes) " if c.num_classes else ""
        lines = [f"npsn: {'resuming' if self.from_checkpoint else 'training'} {kind}{c.model} on {self.n_images} "
                 f"CIFAR-10 images ({self.data}), device {c.device}, run dir {self.out_dir}"]
        split = self.processes.describe(c)
        lines += [split] if split else []
        lines.append(f"preset {preset_description(c)}")
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(c).items()))
        if self.from_checkpoint:
            lines.append(f"resuming from iteration {self.trainer.iteration} of {c.iterations}")
        elif self.recorded:
            lines.append(f"no checkpoint in {self.out_dir} (the run stopped before its first one): starting it "
                         f"again from iteration 0 with its recorded settings; its log starts again")
        return lines

    def train(self):
        """Train to ``config.iterations`` (:meth:`~npsn.gan.trainer.Trainer.run`): samples, log lines and
        checkpoints at their intervals and on time, a last checkpoint at the end; returns the last
        (loss_d, loss_g). Raises :class:`RunInterrupted` or :class:`RunFailed` (the run stays open)."""
        if not self.is_open:
            raise RuntimeError("the run is closed: open it again with Run.resume")
        with self._explaining():
            return self.trainer.run()

    def close(self):
        """Release the run directory's lock (when this process holds it); the run is closed."""
        self.is_open = False
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _explaining(self):
        """Turn what its block raises into the library's exception (:meth:`_explained`)."""
        try:
            yield
        except BaseException as exc:
            explained = self._explained(exc)
            if explained is exc:
                raise
            raise explained from exc

    def _explained(self, exc):
        """The library exception for ``exc``, its message written from the run's state now: a refusal is a
        :class:`RunError`; a signal, divergence, out of memory or failed write a :class:`RunStopped`;
        anything else (a bug) is ``exc`` itself."""
        trainer = self.trainer
        if isinstance(exc, (RunError, RunStopped)):
            return exc
        if isinstance(exc, REFUSALS):
            return RunError(str(exc))
        if isinstance(exc, KeyboardInterrupt):  # data-parallel: RanksStopped, on every rank after the same iteration
            return RunInterrupted(self._interrupted())
        if isinstance(exc, TrainingDiverged):  # data-parallel: the global losses and parameters, so on every rank
            return RunFailed(f"training stopped: {exc}. {last_good(trainer)[0].upper()}{last_good(trainer)[1:]}")
        if isinstance(exc, MemoryError):
            c = self.config
            return RunFailed(f"{self.processes.rank_prefix}out of memory with --batch-size {c.batch_size} "
                             f"({c.model}); try a smaller --batch-size in a new run (with a new --out: a run's "
                             f"batch size is fixed)" + (f"; {last_good(trainer)}" if trainer else ""), local=True)
        if isinstance(exc, OSError):  # a file of the run (a closed stdout is not one: say() drops what it cannot print)
            where = f" at iteration {trainer.iteration}" if trainer else ""
            reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else one_line(exc)
            return RunFailed(f"{self.processes.rank_prefix}a write failed{where} ({reason}); training stopped, "
                             f"{last_good(trainer) + '; ' if trainer else ''}free space (or fix the folder), then "
                             f"{how_to_continue(self.out_dir, self.command)}", local=True)
        return exc

    def _interrupted(self):
        """Where an interrupted run stands, and how to go on."""
        trainer = self.trainer
        if trainer is None or not self.written:
            return "interrupted before training started; nothing was written"
        if trainer.saved_iteration == trainer.iteration:
            return (f"interrupted at iteration {trainer.iteration}; checkpoint written. "
                    f"Continue with: {self.command} --resume {self.out_dir}")
        return (f"interrupted at iteration {trainer.iteration} before its checkpoint was complete; "
                f"{last_good(trainer)}; {how_to_continue(self.out_dir, self.command)}")
