"""Finite-difference gradient check over a table of every layer.

Adding a layer means adding one row to LAYERS: (name, builder(rng) -> float64 module, input shape).
Every row is checked in training and in eval mode, for the input gradient and every parameter.
"""
import numpy as np
import pytest

import npsn
from gradcheck import check_module_gradients
from npsn.nn.activations import Scale
from npsn.backend import to_device
from npsn.distributed.comm import SingleProcess
from npsn.nn.sync_batchnorm import SyncBatchNorm2d
from npsn.gan.resnet import discriminator_block, generator_block, optimized_discriminator_block

TOLERANCE = 1e-6


def _bn_with_running_stats(cls, c):
    def build(rng):
        bn = cls(c)
        bn.weight.data = rng.uniform(0.5, 1.5, c)
        bn.bias.data = rng.standard_normal(c)
        bn.running_mean = rng.standard_normal(c)
        bn.running_var = rng.uniform(0.5, 2.0, c)
        return bn
    return build


def _sn(make_layer):
    return lambda rng: npsn.SpectralNorm(make_layer(rng), rng=rng)


LAYERS = [
    ("Linear", lambda rng: npsn.Linear(5, 4, rng=rng), (3, 5)),
    ("Linear(no bias)", lambda rng: npsn.Linear(5, 4, bias=False, rng=rng), (3, 5)),
    ("Conv2d(k3,s1,p1)", lambda rng: npsn.Conv2d(3, 4, 3, 1, 1, rng=rng), (2, 5, 5, 3)),
    ("Conv2d(k4,s2,p1)", lambda rng: npsn.Conv2d(3, 4, 4, 2, 1, rng=rng), (2, 6, 6, 3)),
    ("Conv2d(k3,s2,p0,no bias)", lambda rng: npsn.Conv2d(2, 3, 3, 2, 0, bias=False, rng=rng), (2, 7, 7, 2)),
    ("Conv2d(k1)", lambda rng: npsn.Conv2d(3, 2, 1, rng=rng), (2, 3, 3, 3)),
    ("Conv2d(k3,s1,p1,O<C)", lambda rng: npsn.Conv2d(4, 2, 3, 1, 1, rng=rng), (2, 5, 5, 4)),  # the flipped-scatter path
    ("Conv2d(k3,s1,p0,O<C)", lambda rng: npsn.Conv2d(3, 2, 3, 1, 0, rng=rng), (2, 5, 4, 3)),
    ("ConvTranspose2d(k4,s2,p1)", lambda rng: npsn.ConvTranspose2d(3, 4, 4, 2, 1, rng=rng), (2, 3, 3, 3)),
    ("ConvTranspose2d(k3,s1,p1)", lambda rng: npsn.ConvTranspose2d(3, 2, 3, 1, 1, rng=rng), (2, 4, 4, 3)),
    ("ConvTranspose2d(k3,s2,p0)", lambda rng: npsn.ConvTranspose2d(2, 3, 3, 2, 0, rng=rng), (1, 3, 3, 2)),
    ("BatchNorm1d", _bn_with_running_stats(npsn.BatchNorm1d, 4), (6, 4)),
    ("BatchNorm2d", _bn_with_running_stats(npsn.BatchNorm2d, 3), (2, 3, 3, 3)),
    # one rank (no MPI): the same math as BatchNorm; tests/test_distributed.py checks 2 ranks against differences
    ("SyncBatchNorm2d", _bn_with_running_stats(lambda c: SyncBatchNorm2d(c, SingleProcess()), 3), (2, 3, 3, 3)),
    ("ReLU", lambda rng: npsn.ReLU(), (3, 7)),
    ("LeakyReLU(0.1)", lambda rng: npsn.LeakyReLU(0.1), (3, 7)),
    ("Tanh", lambda rng: npsn.Tanh(), (3, 7)),
    ("Sigmoid", lambda rng: npsn.Sigmoid(), (3, 7)),
    ("Scale(2.5)", lambda rng: Scale(2.5), (3, 7)),
    ("Flatten", lambda rng: npsn.Flatten(), (2, 3, 4, 5)),
    ("Reshape", lambda rng: npsn.Reshape(3, 2, 2), (2, 12)),
    ("ToChannelsLast", lambda rng: npsn.ToChannelsLast(), (2, 3, 4, 5)),
    ("ToChannelsFirst", lambda rng: npsn.ToChannelsFirst(), (2, 3, 4, 5)),
    ("AvgPool2d(2)", lambda rng: npsn.AvgPool2d(2), (2, 4, 6, 3)),
    ("Upsample(2)", lambda rng: npsn.Upsample(2), (2, 3, 2, 3)),
    ("GlobalSumPool2d", lambda rng: npsn.GlobalSumPool2d(), (2, 3, 4, 3)),
    ("Sequential", lambda rng: npsn.Sequential(npsn.Linear(4, 6, rng=rng), npsn.Tanh(), npsn.Linear(6, 2, rng=rng)),
     (3, 4)),
    ("Residual(identity)", lambda rng: npsn.Residual(npsn.Sequential(npsn.Conv2d(3, 3, 3, 1, 1, rng=rng), npsn.Tanh())),
     (2, 4, 4, 3)),
    ("Residual(conv shortcut)", lambda rng: npsn.Residual(
        npsn.Sequential(npsn.Conv2d(3, 4, 3, 1, 1, rng=rng), npsn.Tanh(), npsn.AvgPool2d(2)),
        npsn.Sequential(npsn.Conv2d(3, 4, 1, rng=rng), npsn.AvgPool2d(2))), (2, 4, 4, 3)),
    ("ResNet G block", lambda rng: generator_block(3, 2, rng), (2, 2, 2, 3)),
    ("ResNet D block(down)", lambda rng: discriminator_block(2, 3, rng, sn=True, downsample=True), (2, 4, 4, 2)),
    ("ResNet D block", lambda rng: discriminator_block(3, 3, rng, sn=False), (2, 3, 3, 3)),
    ("ResNet optimized D block", lambda rng: optimized_discriminator_block(3, 2, rng, sn=False), (2, 4, 4, 3)),
    ("SpectralNorm(Linear)", _sn(lambda rng: npsn.Linear(5, 4, rng=rng)), (3, 5)),
    ("SpectralNorm(Conv2d)", _sn(lambda rng: npsn.Conv2d(3, 4, 3, 2, 1, rng=rng)), (2, 5, 5, 3)),
    ("SpectralNorm(ConvTranspose2d)", _sn(lambda rng: npsn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng)), (2, 3, 3, 3)),
    ("SpectralNorm(Conv2d, operator)", lambda rng: npsn.SpectralNorm(
        npsn.Conv2d(3, 4, 3, 2, 1, rng=rng), rng=rng, mode="operator", input_shape=(2, 5, 5, 3)), (2, 5, 5, 3)),
]


def build_case(builder, shape, mode, device, seed=0):
    rng = np.random.default_rng(seed)
    module = builder(rng).to(device, dtype=np.float64)
    for name, p in module.named_parameters():
        if name.endswith("bias"):  # zero biases would put ReLUs exactly on their kink, where differences lie
            p.data = to_device(0.5 * rng.standard_normal(p.data.shape), device)
    for m in module.modules():
        # SN's u, v are converged first, so that a finite-difference forward's power-iteration step
        # (from the same restored u, v) moves sigma only to second order
        if isinstance(m, npsn.SpectralNorm):
            m.power_iteration(3000)
    module.train(mode == "train")
    x = to_device(rng.standard_normal(shape), device)
    return module, x


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,builder,shape", LAYERS, ids=[row[0] for row in LAYERS])
def test_gradients_match_finite_differences(name, builder, shape, mode, device):
    module, x = build_case(builder, shape, mode, device)
    errors = check_module_gradients(module, x)
    assert set(errors) == {"input"} | {n for n, _ in module.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"{name} ({mode}): {worst} gradient has relative error {errors[worst]:.2e}"


def worst_errors(device="cpu"):
    """{layer name: largest relative error over modes, input and parameters} -- for reports."""
    return {name: max(max(check_module_gradients(*build_case(b, s, m, device)).values()) for m in ("train", "eval"))
            for name, b, s in LAYERS}


if __name__ == "__main__":
    for layer, err in worst_errors().items():
        print(f"{layer:32s} {err:.2e}")
