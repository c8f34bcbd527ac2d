"""A training run's directory: checking it and its files before anything is written, then taking it.

A run directory holds ``config.json`` (the :class:`~npsn.gan.trainer.TrainConfig` plus ``data``,
the absolute path of the training data), ``log.jsonl``, ``samples_*.png``, ``checkpoint.npz``
and ``.lock``. The training script reads and checks everything here first and writes only when
all of it is valid; each problem is a :class:`RunDirError` whose message is one line that names
the file and says what to do.

One process writes a run: the training process takes the run directory with
:func:`claim_run_dir` before it writes anything there and holds it for its whole life. The
claim is an exclusive ``flock`` on ``.lock`` (which holds the pid of the process that took it
last, and stays: the lock is what counts, not the file). The operating system releases it
when the process ends, however it ends, so a lock left by a dead process never blocks. A
second process is refused in one line, early by :func:`check_not_locked` (which writes
nothing), and for certain by :func:`claim_run_dir`, which also checks that nobody wrote the
run between the checks and the claim. A run started without ``--out`` gets its folder from
:func:`new_run_dir`, unique even for runs started in the same second.

The life of a GAN run that uses these pieces (options, checks, lock, config.json, training) is
:class:`npsn.gan.run.Run`; ``scripts/train_classifier.py`` uses them for its classifier: a run to
resume is read with :func:`recorded_run`, taken and its config.json written with
:func:`start_writing`, and its log cut back to its checkpoint with :func:`cut_log`.
"""
import dataclasses
import glob
import json
import os
import zipfile

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked
    fcntl = None

from npsn.gan.checkpoint import load_checkpoint, replace_atomically

TEMP_PATTERN = ".checkpoint-*.tmp"  # npsn.gan.checkpoint.save_checkpoint's temporary files
LOCK_NAME = ".lock"
RUN_FILES = ("config.json", "log.jsonl", "checkpoint.npz")  # what run_state compares


class RunDirError(Exception):
    """A run directory or one of its files is missing, damaged, unusable or in use (a one-line message)."""


def is_empty_dir(path):
    """A folder that holds nothing, or only the lock file of a process that wrote nothing else."""
    return os.path.isdir(path) and not [name for name in os.listdir(path) if name != LOCK_NAME]


def check_creatable(path, what):
    """``path`` can be created: its nearest existing parent is a writable folder (else RunDirError naming ``what``)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"{what}: cannot create it ({parent} is not a writable folder)")


def check_writable_folder(path, what):
    """``path`` is a writable folder, or can be created (:func:`check_creatable`)."""
    if not os.path.exists(path):
        check_creatable(path, what)
    elif not os.path.isdir(path):
        raise RunDirError(f"{what}: a file of that name exists; give a folder")
    elif not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"{what}: that folder is not writable")


def check_new_run_dir(out):
    """A new run may write into ``out``: it does not exist (its parent is writable) or is an empty folder."""
    if os.path.isfile(out) or (os.path.exists(out) and not os.path.isdir(out)):
        raise RunDirError(f"--out {out}: a file of that name exists; choose a new run directory")
    if os.path.isdir(out):
        check_not_locked(out, "--out")
        if not is_empty_dir(out):
            raise RunDirError(f"--out {out}: that directory is not empty (a run is never overwritten); "
                              f"continue it with --resume {out}, or choose a new --out")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunDirError(f"--out {out}: that directory is not writable")
        return
    check_creatable(out, f"--out {out}")


def check_resume_dir(run_dir):
    """``run_dir`` is a run we can continue: no other process trains it, it holds config.json and is writable.

    Returns whether it holds ``checkpoint.npz`` (a run that stopped before its first checkpoint
    has none; it then starts again from iteration 0).
    """
    if not os.path.isdir(run_dir):
        raise RunDirError(f"--resume {run_dir}: no such run directory")
    check_not_locked(run_dir, "--resume")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        if is_empty_dir(run_dir):
            raise RunDirError(f"--resume {run_dir}: the run wrote nothing there (no config.json); start it again "
                              f"with --out {run_dir}")
        raise RunDirError(f"--resume {run_dir}: no config.json there (is it a run directory?)")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"--resume {run_dir}: the run directory is not writable")
    return os.path.isfile(os.path.join(run_dir, "checkpoint.npz"))


@dataclasses.dataclass
class RecordedRun:
    """What ``--resume`` found in a run directory (:func:`recorded_run`): the values of its config.json,
    whether it holds a checkpoint, and its :func:`run_state` when it was checked (what
    :func:`claim_run_dir` compares, to see that nobody wrote the run since)."""

    run_dir: str
    values: dict
    has_checkpoint: bool
    state: tuple


def recorded_run(run_dir):
    """The run in ``run_dir``, to resume: :func:`check_resume_dir`, then its state, then its config.json.

    The state is taken before config.json is read, so that a write by another process from then on
    is noticed by the claim. Raises :class:`RunDirError` (no run there, in use, not writable, or a
    config.json that is not a JSON object).
    """
    has_checkpoint = check_resume_dir(run_dir)
    state = run_state(run_dir)
    return RecordedRun(run_dir, read_config_json(run_dir), has_checkpoint, state)


# ---------------------------------------------------------------- one writer per run directory

def _busy(run_dir, option, pid):
    """The one-line refusal when another process holds ``run_dir``'s lock."""
    who = f"another process (pid {pid})" if pid else "another process"
    then = "choose a new --out" if option == "--out" else "wait until it has stopped (or stop it), then resume"
    return f"{option} {run_dir}: {who} is training this run; {then}"


def _read_pid(fd):
    """The pid written in an open lock file, or None (not written yet, or not a number)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdecimal() and text.isascii() else None


def check_not_locked(run_dir, option):
    """RunDirError when another process holds ``run_dir``'s lock; reads only (a test, not a claim).

    A quick check before the data is loaded; :func:`claim_run_dir` is the one that decides.
    """
    if fcntl is None:
        return
    try:
        fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDONLY)
    except OSError:  # no lock file (a run of an older npsn, or none yet), or not ours to read
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(_busy(run_dir, option, _read_pid(fd))) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run_state(run_dir):
    """What :func:`claim_run_dir` compares to see that no other process wrote the run since it was checked:
    name, inode, size and modification time of each of the run's own files (``RUN_FILES``)."""
    state = []
    for name in RUN_FILES:
        try:
            st = os.stat(os.path.join(run_dir, name))
        except FileNotFoundError:
            continue
        state.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(state)


class RunLock:
    """This process's claim on a run directory (:func:`claim_run_dir`). :meth:`release` frees it; so
    does the end of the process, however it ends."""

    def __init__(self, run_dir, fd):
        self.run_dir, self.fd = run_dir, fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases its flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim_run_dir(run_dir, option, state=None):
    """Make ``run_dir`` this process's to write: create it if needed, lock it, check that it is as validated.

    Args:
        run_dir: the run directory.
        option: ``"--out"`` (a new run) or ``"--resume"``; the messages name it.
        state: for a resumed run, :func:`run_state` of ``run_dir`` when it was checked; None for a
            new run, whose folder must then hold nothing but ``.lock``.
    Returns:
        a :class:`RunLock`; ``.lock`` then holds this process's pid.
    Raises:
        RunDirError: another process holds the lock, or wrote the run after it was checked.
        OSError: the folder or the lock file cannot be created.
    """
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    lock = RunLock(run_dir, fd)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(_busy(run_dir, option, _read_pid(fd))) from None
        if not is_empty_dir(run_dir) if state is None else run_state(run_dir) != state:
            raise RunDirError(f"{option} {run_dir}: another process wrote to this run while this one was "
                              f"starting; look at the run, then start again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        lock.release()
        raise
    return lock


def start_writing(run_dir, option, state, config_values, notice=None):
    """Make ``run_dir`` this process's (:func:`claim_run_dir`), then begin writing it: remove the temporary
    files a process killed during a save left (each named through ``notice``), and write ``config_values`` as
    its config.json (:func:`write_json_atomic`).

    Returns the :class:`RunLock`; when a step after the claim fails, the lock is released and the
    exception propagates (RunDirError from the claim; OSError from a write).
    """
    lock = claim_run_dir(run_dir, option, state)
    try:
        for tmp in stale_temp_files(run_dir):
            os.remove(tmp)
            if notice:
                notice(f"note: removed {tmp} (a partial checkpoint left by a process killed during a save)")
        write_json_atomic(os.path.join(run_dir, "config.json"), config_values)
    except BaseException:
        lock.release()
        raise
    return lock


def new_run_dir(base):
    """Create the folder ``base``, or ``base-2``, ``base-3``, ... (the first name not taken); returns its path.

    ``os.mkdir`` creates a folder, or fails when the name exists, in one step: two processes
    started in the same second (a default run name holds the time to the second) never get
    the same folder.
    """
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    n = 1
    while True:
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1


def how_to_continue(run_dir, command):
    """Advice that works in ``run_dir``'s state now, for a run stopped by a fault or a signal.

    With a checkpoint: ``--resume``. With config.json alone (the run stopped before its first
    checkpoint): ``--resume`` too, which starts it again from the beginning with its settings.
    With neither (nothing of the run was written): the same command again.
    """
    if os.path.isfile(os.path.join(run_dir, "checkpoint.npz")):
        return f"continue with: {command} --resume {run_dir}"
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        return (f"no checkpoint yet, so {command} --resume {run_dir} starts it again from the beginning with "
                f"its settings")
    return f"nothing of the run was written: run the same command again (with --out {run_dir})"


# ---------------------------------------------------------------- the run's files

def read_config_json(run_dir):
    """The dict in ``run_dir/config.json``; :class:`RunDirError` if it is not a JSON object."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"{path} is damaged ({type(exc).__name__}: {exc}); restore it from a copy "
                          f"(checkpoint.npz holds the run's settings too) or start a new run") from None
    if not isinstance(values, dict):
        raise RunDirError(f"{path} is damaged (not a JSON object); restore it from a copy or start a new run")
    return values


def read_checkpoint(path):
    """``(arrays, meta)`` of a checkpoint, with meta's iteration, config and noise state checked."""
    what = "restore it from a copy or start a new run with a new --out"
    try:
        arrays, meta = load_checkpoint(path)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        reason = str(exc).split("\n")[0]
        if "allow_pickle" in reason or "pickle" in reason.lower():
            reason = "not an npz archive of arrays"
        raise RunDirError(f"{path} is damaged or not a checkpoint ({type(exc).__name__}: {reason}); {what}") from None
    if not isinstance(meta, dict) or not {"iteration", "config", "noise_state"} <= set(meta):
        raise RunDirError(f"{path} is not an npsn training checkpoint (its metadata lacks iteration, config "
                          f"or noise_state); {what}")
    iteration = meta["iteration"]
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise RunDirError(f"{path} is damaged (iteration {iteration!r}); {what}")
    if not isinstance(meta["config"], dict):
        raise RunDirError(f"{path} is damaged (its config is not a mapping); {what}")
    return arrays, meta


def read_log(path):
    """``(lines, records, torn)``: the lines of ``log.jsonl`` that parse, their records, and whether a
    torn last line (a crash in mid-write) was left out. Any other damaged line is a :class:`RunDirError`."""
    if not os.path.exists(path):
        return [], [], False
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            raw = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} cannot be read ({type(exc).__name__}: {exc}); move it away or restore it")
    lines = raw.splitlines(keepends=True)
    kept, records, torn = [], [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                raise ValueError("no iteration")
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                torn = True  # written in part when the process died: the run lost nothing else
                break
            raise RunDirError(f"{path}: line {number} is damaged; delete that line (or move the file away) "
                              f"and try again") from None
        kept.append(line if line.endswith("\n") else line + "\n")
        records.append(record)
    return kept, records, torn


def log_records(run_dir):
    """The records of ``run_dir``'s log.jsonl, oldest first (none when it has no log; see :func:`read_log`)."""
    return read_log(os.path.join(run_dir, "log.jsonl"))[1]


def cut_log(path, last, key="iteration", notice=None):
    """Cut a run's log back to the checkpoint it continues from, before it appends again.

    Keeps the lines whose record's ``key`` is at most ``last`` (a crash after the checkpoint may
    have logged later ones) and drops a torn last line (a crash in mid-write), naming it through
    ``notice``. ``last`` 0 (a new run, or one started again because it stopped before its first
    checkpoint) empties the log: its earlier attempt's iterations are trained again. The file is
    rewritten only when a line goes.
    """
    if not os.path.exists(path):
        return
    if last == 0:
        open(path, "w").close()
        return
    lines, records, torn = read_log(path)
    if torn and notice:
        notice(f"note: {path}: dropped a torn last line (written in part by a crash)")
    kept = [line for line, record in zip(lines, records) if record.get(key, 0) <= last]
    if len(kept) != len(lines) or torn:
        with open(path, "w") as f:
            f.writelines(kept)


def stale_temp_files(run_dir):
    """Temporary checkpoint files left by a process killed during a save."""
    return sorted(glob.glob(os.path.join(glob.escape(run_dir), TEMP_PATTERN)))


def write_json_atomic(path, values):
    """Write ``values`` as indented JSON to ``path`` through a temporary file and ``os.replace``."""
    tmp = f"{path}.{os.getpid()}.tmp"

    def write(f):
        json.dump(values, f, indent=2)
        f.write("\n")

    replace_atomically(tmp, path, lambda: open(tmp, "w"), write)
