"""Medians of timed calls, the sides alternating.

Each time is the median (min and max are reported too) of ``repeats`` timed calls after
``warmup`` untimed ones; the device is synchronized before every clock read. When two sides
are timed, the first side alternates between repetitions, and each timed call first idles
``settle`` seconds (default 0.2): after a call, the library's idle worker threads keep spinning
for a while (OpenBLAS about 0.1 s), and on a few cores they would slow the other library's next
call down (measured: a PyTorch convolution right after a NumPy matrix product took 3x its time).
The minor page faults of each call are counted too (:func:`benchmarks.memory.minor_faults`).
"""
import statistics
import time

from benchmarks.memory import minor_faults
from benchmarks.phases import PHASES


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
    """{median_s, min_s, max_s, times_s, minor_faults_median} of [(seconds, faults), ...]."""
    seconds = [s for s, _ in samples]
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "times_s": [round(s, 5) for s in seconds],
            "minor_faults_median": statistics.median(f for _, f in samples)}


def time_phases(sides, repeats, warmup, settle, progress):
    """{phase: {side name: summary}}: per phase, warm-up calls, then ``repeats`` calls alternating the sides.

    With two sides, each timed call waits ``settle`` seconds first (see the module docstring).
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
