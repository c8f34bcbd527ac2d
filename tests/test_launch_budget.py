"""The GPU launch budget: device operations, syncs and copies of one steady-state cnn iteration, on the strict stand-in.

A GPU iteration of npsn is launch-bound (each operation costs microseconds of Python and launch
overhead), so the budget is on counts: at most 950 device operations (before the flat Adam, the
fused BatchNorm/SN kernels and the grouped col2im: 1,436 on the same stand-in; 742 after), at most one
host wait (the losses read back for the divergence check) and at most three host-to-device copies
(the real batch and the two batches of z) per iteration of the ``cnn`` preset at batch 64 (n_dis 1).
The counting rules are the stand-in's (``tests/strict_cupy``); ``bench.py --device gpu`` prints
the same count (:mod:`benchmarks.launches`).
"""
import strict_cupy
from benchmarks.config import BenchConfig
from benchmarks.launches import count_iteration

MAX_OPS, MAX_SYNCS, MAX_H2D = 950, 1, 3
#: Device memory of the same iteration, counted on the stand-in (live bytes in CuPy's 512-byte blocks):
#: MEASURED_START_MIB live when it starts (weights, Adam's moments, kept buffers), MEASURED_PEAK_MIB at its
#: peak. A change that makes either grow by more than 5 % fails here: say why in docs/gpu.md's memory table.
MEASURED_START_MIB, MEASURED_PEAK_MIB = 103.9, 630.6
GROWTH = 1.05


def test_a_steady_state_cnn_iteration_fits_the_launch_budget():
    counts = count_iteration(BenchConfig(device="gpu", models=["cnn"], batch_size=64), "cnn")
    assert counts["ops"] <= MAX_OPS, counts
    assert counts["syncs"] <= MAX_SYNCS, counts
    assert counts["h2d"] <= MAX_H2D, counts
    mib = 2**20
    assert counts["start_bytes"] <= GROWTH * MEASURED_START_MIB * mib, counts
    assert counts["peak_bytes"] <= GROWTH * MEASURED_PEAK_MIB * mib, counts
    assert counts["peak_bytes"] > counts["start_bytes"] > 0, counts


def test_adam_is_one_concatenate_and_one_kernel_per_model():
    """The flat optimizer: a step over every parameter of a model is a fixed handful of operations."""
    import numpy as np

    from npsn import backend
    from npsn.gan.models import build_gan
    from npsn.optim import Adam

    with backend.use_gpu_module(strict_cupy.cupy):
        G, _ = build_gan("cnn", g_ch=16, d_ch=8)
        G.to("gpu")
        adam = Adam(G.parameters(), lr=1e-3)
        for step in range(2):
            for p in G.parameters():
                p.grad = backend.to_device(np.ones(p.data.shape, np.float32), "gpu")
            with strict_cupy.counting() as counts:
                adam.step()
            if step == 1:  # the first step also makes the moments (2 zeros)
                # one concatenate, one fused kernel, and its three results stored into (p, m, v) in place
                # (backend.elementwise's out= on CuPy), for the 18 parameters of G
                assert counts.by_name == {"concatenate": 1, "fuse:npsn__adam_step": 1, "setitem": 3}, counts.by_name
                assert counts.syncs == 0 and counts.h2d == 0
