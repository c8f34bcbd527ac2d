"""A training run's directory: reading and checking its files before anything is written to it.

A run directory holds ``config.json`` (the :class:`~npsn.gan.trainer.TrainConfig` plus ``data``,
the absolute path of the training data), ``log.jsonl``, ``samples_*.png`` and
``checkpoint.npz``. The training script reads and checks everything here first and writes
only when all of it is valid; each problem is a :class:`RunDirError` whose message is one line
that names the file and says what to do.
"""
import glob
import json
import os
import zipfile

from npsn.gan.checkpoint import load_checkpoint, replace_atomically

TEMP_PATTERN = ".checkpoint-*.tmp"  # npsn.gan.checkpoint.save_checkpoint's temporary files


class RunDirError(Exception):
    """A run directory or one of its files is missing, damaged or unusable (a one-line message)."""


def is_empty_dir(path):
    return os.path.isdir(path) and not os.listdir(path)


def check_new_run_dir(out):
    """A new run may write into ``out``: it does not exist (its parent is writable) or is an empty folder."""
    if os.path.isfile(out) or (os.path.exists(out) and not os.path.isdir(out)):
        raise RunDirError(f"--out {out}: a file of that name exists; choose a new run directory")
    if os.path.isdir(out):
        if not is_empty_dir(out):
            raise RunDirError(f"--out {out}: that directory is not empty (a run is never overwritten); "
                              f"continue it with --resume {out}, or choose a new --out")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunDirError(f"--out {out}: that directory is not writable")
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out}: cannot create it ({parent} is not a writable folder)")


def check_resume_dir(run_dir):
    """``run_dir`` is a run directory we can continue: it holds config.json and checkpoint.npz and is writable."""
    if not os.path.isdir(run_dir):
        raise RunDirError(f"--resume {run_dir}: no such run directory")
    for name in ("checkpoint.npz", "config.json"):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise RunDirError(f"--resume {run_dir}: no {name} there (is it a run directory?)")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"--resume {run_dir}: the run directory is not writable")


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
