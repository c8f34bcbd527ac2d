"""Writing to stdout and stderr so that a closed pipe never stops a run.

``python scripts/train_cifar.py ... | head -1``: once ``head`` has its line it exits, and every
later write to the pipe fails (EPIPE; Python ignores SIGPIPE and raises BrokenPipeError, a
kind of OSError). That says nothing about the run's own files, so it must neither stop
training nor be reported as a failed write. :func:`write` and :func:`say` drop such a write
and point the stream's file descriptor at ``os.devnull`` (:func:`silence`), so that every later
write to it, and the interpreter's own flush at exit, go nowhere instead of failing. Every
other error propagates as it is. The training scripts print through these, and call
:func:`flush_at_exit` last. Their command lines are parsed by :class:`OneLineParser`, whose errors
are one line, like every other error of theirs.
"""
import argparse
import os
import sys


def silence(stream):
    """Point ``stream``'s file descriptor at ``os.devnull``, and drop what its buffer still holds.

    A stream without a file descriptor (a test's capture) is left as it is.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    try:
        stream.flush()  # the buffered rest goes to os.devnull
    except OSError:
        pass


def write(stream, text):
    """``stream.write(text)``, flushed; on a closed pipe the text is dropped and the stream silenced.

    ``stream`` None (Python's ``sys.stdout`` when the process started without a file descriptor 1,
    ``>&-``) drops the text too, as ``print`` does.
    """
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        silence(stream)


def say(*values, file=None, sep=" ", end="\n"):
    """``print(*values, file=file)`` (default stdout), flushed at once; on a closed pipe, dropped."""
    write(sys.stdout if file is None else file, sep.join(str(value) for value in values) + end)


def notice(message):
    """A line for the user on stderr (a note, a warning): :func:`say` to ``sys.stderr``."""
    say(message, file=sys.stderr)


def one_line(text, limit=160):
    """``text`` (a message, an exception) on one line of at most ``limit`` characters.

    >>> one_line("a\\n  b", limit=3)
    'a b'
    >>> one_line("abcdef", limit=3)
    'abc ...'
    """
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def flush_at_exit():
    """Flush stdout and stderr before the interpreter does at exit, silencing a closed pipe instead of
    letting the interpreter report it ("Exception ignored ... BrokenPipeError")."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            silence(stream)
        except (AttributeError, OSError, ValueError):
            pass


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (no usage block): ``<prog>: error: <message> (see --help)``,
    exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
