"""A one-line progress bar on stderr: iterations, rate, ETA and the latest losses (no dependencies).

A closed stream (a pipe whose reader has gone) drops the bar's lines (:func:`npsn.utils.console.write`).
"""
import sys
import time

from npsn.utils.console import write


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class ProgressBar:
    """Redraws in place on a terminal (at most every ``interval`` s); prints a plain line every 30 s otherwise."""

    def __init__(self, total, start=0, width=24, stream=None, interval=0.2):
        self.total, self.start, self.width = total, start, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if self.tty else 30.0
        self.t0 = time.perf_counter()
        self.last_draw = -float("inf")

    def update(self, iteration, images_per_second, info="", force=False):
        now = time.perf_counter()
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        done = iteration - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - iteration) / rate if rate > 0 else 0.0
        filled = int(self.width * iteration / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        line = (f"[{bar}] {iteration}/{self.total} {images_per_second:7.1f} img/s "
                f"ETA {format_seconds(eta)} {info}")
        write(self.stream, ("\r" + line + "\033[K") if self.tty else line + "\n")

    def close(self):
        if self.tty:
            write(self.stream, "\n")
