"""Finite-difference gradient check over a table of every layer.

Adding a layer means adding one row to LAYERS: (name, builder(rng) -> float64 module, input shape).
Every row is checked in training and in eval mode, for the input gradient and every parameter.
Layers that take class labels, ``module(x, y)`` (or ``module(y)`` alone), have their rows in
LABELLED_LAYERS: (name, builder, input shape or None, number of classes); labels are fixed integers
(every class present when the batch allows) and get no gradient.
"""
import numpy as np
import pytest

import npsn
from gradcheck import check_module_gradients, numerical_gradient, relative_error
from npsn.nn.activations import Scale
from npsn.nn.maxpool import MaxPool2d
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


def _wn(make_layer):
    return lambda rng: npsn.WeightNorm(make_layer(rng))


def _after_a_draw(make_layer):
    """A builder that takes one value of rng first. x comes from the same seed as the check's R, so for a layer
    that draws nothing x = R, and LayerNorm's input gradient of <y, x> is exactly 0 (x - mean and x are the two
    directions it removes): nothing would be checked."""
    return lambda rng: (rng.standard_normal(), make_layer())[1]


def _bn_without_affine(c):
    def build(rng):
        bn = npsn.BatchNorm2d(c, affine=False)
        bn.running_mean = rng.standard_normal(c)
        bn.running_var = rng.uniform(0.5, 2.0, c)
        return bn
    return build


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
    ("MaxPool2d(2)", lambda rng: MaxPool2d(2), (2, 4, 6, 3)),
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
    # the paper's competing discriminators (issue 21): normalizations without their gain gamma
    ("LayerNorm(images)", _after_a_draw(npsn.LayerNorm), (2, 3, 3, 4)),
    ("LayerNorm(features)", _after_a_draw(npsn.LayerNorm), (3, 5)),
    ("Bias", lambda rng: npsn.Bias(4), (2, 3, 3, 4)),
    ("BatchNorm2d(affine=False)", _bn_without_affine(3), (2, 3, 3, 3)),
    ("WeightNorm(Linear)", _wn(lambda rng: npsn.Linear(5, 4, rng=rng)), (3, 5)),
    ("WeightNorm(Conv2d)", _wn(lambda rng: npsn.Conv2d(3, 4, 3, 2, 1, rng=rng)), (2, 5, 5, 3)),
    ("WeightNorm(ConvTranspose2d)", _wn(lambda rng: npsn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng)), (2, 3, 3, 3)),
    ("cnn D block (ln)", lambda rng: npsn.Sequential(npsn.Conv2d(3, 4, 4, 2, 1, bias=False, rng=rng), npsn.LayerNorm(),
                                                     npsn.Bias(4), npsn.LeakyReLU(0.1)), (2, 6, 6, 3)),
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


def _ccbn_with_running_stats(cls, c, k):
    def build(rng):
        bn = cls(c, k)
        bn.weight.data = rng.uniform(0.5, 1.5, (k, c))
        bn.bias.data = rng.standard_normal((k, c))
        bn.running_mean = rng.standard_normal(c)
        bn.running_var = rng.uniform(0.5, 2.0, c)
        return bn
    return build


def _projection(sn):
    def build(rng):
        linear, embedding = npsn.Linear(5, 1, rng=rng), npsn.Embedding(3, 5, rng=rng)
        if sn:
            linear, embedding = npsn.SpectralNorm(linear, rng=rng), npsn.SpectralNorm(embedding, rng=rng)
        return npsn.Projection(linear, embedding)
    return build


LABELLED_LAYERS = [
    ("Embedding", lambda rng: npsn.Embedding(3, 4, rng=rng), None, 3),
    ("SpectralNorm(Embedding)", _sn(lambda rng: npsn.Embedding(3, 4, rng=rng)), None, 3),
    ("CategoricalConditionalBatchNorm1d", _ccbn_with_running_stats(npsn.CategoricalConditionalBatchNorm1d, 4, 3),
     (6, 4), 3),
    ("CategoricalConditionalBatchNorm2d", _ccbn_with_running_stats(npsn.CategoricalConditionalBatchNorm2d, 3, 3),
     (4, 2, 3, 3), 3),
    ("Projection", _projection(sn=False), (4, 5), 3),
    ("Projection(SN)", _projection(sn=True), (4, 5), 3),
    ("ConditionalSequential", lambda rng: npsn.ConditionalSequential(
        npsn.Linear(4, 3, rng=rng), npsn.CategoricalConditionalBatchNorm1d(3, 2), npsn.Tanh(),
        npsn.Linear(3, 2, rng=rng), num_classes=2), (5, 4), 2),
    ("Conditional ResNet G block", lambda rng: generator_block(3, 2, rng, num_classes=3), (3, 2, 2, 3), 3),
]


def check_labelled_gradients(module, x, labels, seed=0, h=1e-6):
    """``check_module_gradients`` for ``module(x, labels)`` (``module(labels)`` if x is None): relative errors."""
    xp = npsn.get_array_module(labels)
    call = (lambda: module(labels)) if x is None else (lambda: module(x, labels))
    snapshot = [(m, name, b.copy()) for m in module.modules() for name, b in m._buffers.items()]

    def restore():
        for m, name, b in snapshot:
            m._buffers[name] = b.copy()

    restore()
    R = xp.asarray(np.random.default_rng(seed).standard_normal(call().shape))

    def loss():
        restore()
        return float(npsn.to_numpy((call() * R).sum()))

    module.zero_grad()
    restore()
    call()
    grad_x = module.backward(R)
    pairs = {} if x is None else {"input": (grad_x, numerical_gradient(loss, x, h))}
    if x is None:
        assert grad_x is None  # labels get no gradient
    for name, p in module.named_parameters():
        analytic = p.grad if p.grad is not None else xp.zeros_like(p.data)
        pairs[name] = (analytic, numerical_gradient(loss, p.data, h))
    restore()
    floor = 1e-3 * max(float(np.linalg.norm(npsn.to_numpy(a))) for a, _ in pairs.values())
    return {name: relative_error(a, n, floor) for name, (a, n) in pairs.items()}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,builder,shape,k", LABELLED_LAYERS, ids=[row[0] for row in LABELLED_LAYERS])
def test_labelled_gradients_match_finite_differences(name, builder, shape, k, mode, device):
    module, x = build_case(builder, shape or (1,), mode, device)
    n = shape[0] if shape else 5
    # every class present (when n >= k), in a shuffled order
    labels = to_device(np.random.default_rng(1).permutation(np.arange(n) % k).astype(np.int32), device)
    errors = check_labelled_gradients(module, None if shape is None else x, labels)
    assert set(errors) == ({"input"} if shape else set()) | {n for n, _ in module.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"{name} ({mode}): {worst} gradient has relative error {errors[worst]:.2e}"


# ---------------------------------------------------------------------------------------------- penalties
# A term of D's objective that is not a layer: (name, builder(rng) -> float64 module, penalty(module) -> 0-d P,
# adding dP/dp into .grad). Every parameter's gradient is checked against central differences of P.

def _small_d(wrap=lambda layer: layer):
    """A D of the layers the gradient penalty supports: NCHW (2, 3, 6, 6) -> (2, 1)."""
    def build(rng):
        return npsn.Sequential(npsn.ToChannelsLast(), wrap(npsn.Conv2d(3, 4, 3, 1, 1, rng=rng)), npsn.LeakyReLU(0.1),
                               wrap(npsn.Conv2d(4, 3, 4, 2, 1, rng=rng)), npsn.LeakyReLU(0.1), npsn.Flatten(),
                               wrap(npsn.Linear(27, 1, rng=rng)))
    return build


def _gradient_penalty(module):
    from npsn.gan.gradient_penalty import gradient_penalty

    x_hat = to_device(np.random.default_rng(7).standard_normal((2, 3, 6, 6)), device_of_module(module))
    return gradient_penalty(module, x_hat)


def _orthonormal_penalty(module):
    from npsn.gan.methods import layer_weights
    from npsn.gan.orthonormal import OrthonormalRegularization

    return OrthonormalRegularization(layer_weights(module), coefficient=1.0).penalty(module, None, None)


def device_of_module(module):
    return npsn.backend.device_of(next(iter(module.parameters())).data)


PENALTIES = [
    ("gradient penalty (plain D)", _small_d(), _gradient_penalty),
    ("gradient penalty (WeightNorm D)", _small_d(npsn.WeightNorm), _gradient_penalty),
    ("gradient penalty (SpectralNorm D)", _small_d(lambda layer: npsn.SpectralNorm(layer)), _gradient_penalty),
    ("orthonormal penalty (wide and tall weights)", lambda rng: npsn.Sequential(
        npsn.Conv2d(3, 4, 3, rng=rng), npsn.Conv2d(4, 8, 1, rng=rng), npsn.Linear(6, 1, rng=rng)), _orthonormal_penalty),
]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,builder,penalty", PENALTIES, ids=[row[0] for row in PENALTIES])
def test_penalty_gradients_match_finite_differences(name, builder, penalty, mode, device):
    module, _ = build_case(builder, (1,), mode, device)
    snapshot = [(m, key, b.copy()) for m in module.modules() for key, b in m._buffers.items()]

    def restore():
        for m, key, b in snapshot:
            m._buffers[key] = b.copy()

    def value():
        restore()
        return float(npsn.to_numpy(penalty(module)))

    module.zero_grad()
    restore()
    penalty(module)
    analytic = {n: None if p.grad is None else p.grad.copy() for n, p in module.named_parameters()}
    numeric = {n: numerical_gradient(value, p.data) for n, p in module.named_parameters()}
    floor = 1e-3 * max(float(np.linalg.norm(npsn.to_numpy(a))) for a in analytic.values() if a is not None)
    errors = {n: relative_error(npsn.get_array_module(p.data).zeros_like(p.data) if analytic[n] is None
                                else analytic[n], numeric[n], floor) for n, p in module.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"{name} ({mode}): {worst} gradient has relative error {errors[worst]:.2e}"


if __name__ == "__main__":
    for layer, err in worst_errors().items():
        print(f"{layer:32s} {err:.2e}")
