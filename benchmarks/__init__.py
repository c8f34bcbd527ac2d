"""The harness of ``scripts/bench.py``: speed and memory of npsn's SN-GAN models, optionally against PyTorch.

Not installed with npsn: ``scripts/bench.py`` puts the repository root on ``sys.path`` and
imports it from there (as ``python -m pytest`` does, run from the root).

Modules, in the order a run uses them:

* :mod:`benchmarks.config` -- the run's settings (:class:`~benchmarks.config.BenchConfig`);
  imports nothing heavy, so the entry point can set thread variables before NumPy loads;
* :mod:`benchmarks.environment` -- threads (environment, BLAS pools, npsn's host threads,
  PyTorch), the allocator setting, the report of the machine and libraries;
* :mod:`benchmarks.phases` -- what is timed: the phases of a training step on each side;
* :mod:`benchmarks.timing` -- medians of alternating timed calls;
* :mod:`benchmarks.breakdown` -- npsn's iteration split into matrix products, copies and the rest;
* :mod:`benchmarks.memory` -- RSS and page faults, and peak-memory probes in fresh processes;
* :mod:`benchmarks.report` -- the human-readable tables;
* :mod:`benchmarks.harness` -- one model end to end, and the whole run.

The PyTorch mirror and the agreement checks are library code: :mod:`npsn.testing.torch_reference`.
"""
