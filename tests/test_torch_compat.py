"""npsn's layers against PyTorch's: same state_dict names, same outputs, same gradients, same buffers.

PyTorch is only a test oracle here (npsn never imports it); the whole module is skipped where
torch is not installed (e.g. CI). Every comparison is float64: a torch layer in double is built,
its ``state_dict`` is loaded *strictly* into the npsn layer (which checks npsn's parameter and
buffer names), the same input and the same upstream gradient go through both
(:func:`npsn.testing.torch_reference.compare_forward_backward`), and outputs, input gradients,
parameter gradients and buffers must agree to ``TOLERANCE`` (relative to the largest entry of
torch's array). Whole models are mirrored with :func:`npsn.testing.torch_reference.to_torch`.

Layouts: torch takes NCHW images, npsn channels-last NHWC; images are transposed at the boundary.
"""
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npsn  # noqa: E402
from npsn.gan.models import build_gan  # noqa: E402
from npsn.testing import torch_reference  # noqa: E402
from npsn.testing.torch_reference import (  # noqa: E402
    compare_forward_backward, load_npsn_state, relative_error, to_torch, to_torch_layout, to_npsn_layout)

TOLERANCE = 1e-10

# The largest relative error seen per layer, over all of that layer's comparisons (for reports:
# run pytest in-process and read test_torch_compat.MAX_REL_ERR).
MAX_REL_ERR = {}


# ---------------------------------------------------------------------------------- helpers
def check_error(layer_name, what, err):
    """Assert err < TOLERANCE; record it under layer_name."""
    MAX_REL_ERR[layer_name] = max(MAX_REL_ERR.get(layer_name, 0.0), err)
    assert err < TOLERANCE, f"{layer_name}: {what} differs from torch, relative error {err:.3e}"


def assert_close(layer_name, what, ours, theirs):
    """Assert equal shapes and relative_error < TOLERANCE; record the error under layer_name."""
    assert tuple(np.shape(ours)) == tuple(np.shape(theirs)), (
        f"{layer_name}: {what} shape {np.shape(ours)} vs {np.shape(theirs)}")
    check_error(layer_name, what, relative_error(ours, theirs))


def torch_state_as_numpy(torch_layer):
    """The torch layer's state_dict as NumPy arrays (copies)."""
    return {k: v.detach().numpy().copy() for k, v in torch_layer.state_dict().items()}


def load_torch_state(ours, theirs):
    """Cast npsn layer to float64 and load the torch layer's state_dict into it, strictly."""
    ours.to(dtype=np.float64)
    ours.load_state_dict(torch_state_as_numpy(theirs), strict=True)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    return ours


def compare_step(layer_name, ours, theirs, x, rng):
    """One forward and backward through both layers; compare output, input gradient and parameter gradients.

    Args:
        x: the input in torch's layout (NumPy float64); npsn gets it channels-last.
    Parameter gradients are zeroed first in both, so each step compares one backward's gradients
    (compare_forward_backward raises ValueError if the parameter names differ, and relative_error
    if any shapes do).
    """
    errors = compare_forward_backward(ours, to_npsn_layout(x).copy(), torch_module=theirs, rng=rng)
    their_params = dict(theirs.named_parameters())
    assert set(dict(ours.named_parameters())) == set(their_params)
    assert set(errors) == {"output", "input_grad"} | {f"{name}.grad" for name in their_params}
    for what, err in errors.items():
        assert err != math.inf, f"{layer_name}: npsn computed no gradient for {what[:-len('.grad')]}"
        check_error(layer_name, {"input_grad": "input gradient"}.get(what, what), err)


def compare_buffers(layer_name, ours, theirs):
    """Every buffer (running stats, num_batches_tracked, weight_u, weight_v) equal to torch's."""
    our_buffers = dict(ours.named_buffers())
    their_buffers = {k: v.detach().numpy() for k, v in theirs.named_buffers()}
    assert set(our_buffers) == set(their_buffers)
    for name, theirs_value in their_buffers.items():
        ours_value = np.asarray(our_buffers[name])
        if np.issubdtype(theirs_value.dtype, np.integer):
            assert ours_value.dtype == theirs_value.dtype, f"{layer_name}: {name} dtype"
            assert ours_value.shape == theirs_value.shape and ours_value == theirs_value, f"{layer_name}: {name}"
        else:
            assert_close(layer_name, name, ours_value, theirs_value)


def copy_buffers(module):
    return {k: np.array(v, copy=True) for k, v in module.named_buffers()}


# ---------------------------------------------------------------------------------- layer table
# name -> (torch builder, npsn builder, input shape in torch's layout). Builders take nothing;
# torch layers are seeded by torch.manual_seed in each test.
def _torch_linear():
    return torch.nn.Linear(7, 5).double()


def _torch_conv_k3():
    return torch.nn.Conv2d(3, 4, 3, 1, 1).double()


def _torch_conv_k4():
    return torch.nn.Conv2d(3, 4, 4, 2, 1).double()


def _torch_conv_t_k4():
    return torch.nn.ConvTranspose2d(3, 4, 4, 2, 1).double()


PLAIN_LAYERS = {
    "Linear": (_torch_linear, lambda: npsn.Linear(7, 5), (6, 7)),
    "Conv2d(k3,s1,p1)": (_torch_conv_k3, lambda: npsn.Conv2d(3, 4, 3, 1, 1), (2, 3, 6, 5)),
    "Conv2d(k4,s2,p1)": (_torch_conv_k4, lambda: npsn.Conv2d(3, 4, 4, 2, 1), (2, 3, 8, 6)),
    "ConvTranspose2d(k4,s2,p1)": (_torch_conv_t_k4, lambda: npsn.ConvTranspose2d(3, 4, 4, 2, 1), (2, 3, 4, 5)),
}

SN_LAYERS = {
    "SN(Linear)": (lambda: torch.nn.utils.spectral_norm(_torch_linear()),
                   lambda: npsn.SpectralNorm(npsn.Linear(7, 5)), (6, 7)),
    "SN(Conv2d(k3,s1,p1))": (lambda: torch.nn.utils.spectral_norm(_torch_conv_k3()),
                             lambda: npsn.SpectralNorm(npsn.Conv2d(3, 4, 3, 1, 1)), (2, 3, 6, 5)),
    "SN(Conv2d(k4,s2,p1))": (lambda: torch.nn.utils.spectral_norm(_torch_conv_k4()),
                             lambda: npsn.SpectralNorm(npsn.Conv2d(3, 4, 4, 2, 1)), (2, 3, 8, 6)),
    "SN(ConvTranspose2d(k4,s2,p1))": (lambda: torch.nn.utils.spectral_norm(_torch_conv_t_k4()),
                                      lambda: npsn.SpectralNorm(npsn.ConvTranspose2d(3, 4, 4, 2, 1)), (2, 3, 4, 5)),
}

BN_LAYERS = {
    "BatchNorm1d": (lambda: torch.nn.BatchNorm1d(5).double(), lambda: npsn.BatchNorm1d(5), (8, 5)),
    "BatchNorm2d": (lambda: torch.nn.BatchNorm2d(3).double(), lambda: npsn.BatchNorm2d(3), (4, 3, 5, 6)),
}

ALL_LAYERS = {**PLAIN_LAYERS, **SN_LAYERS, **BN_LAYERS}


# ---------------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", list(PLAIN_LAYERS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_plain_layer_matches_torch(name, training):
    torch_build, npsn_build, input_shape = PLAIN_LAYERS[name]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    theirs = torch_build().train(training)
    ours = load_torch_state(npsn_build(), theirs).train(training)
    compare_step(name, ours, theirs, rng.standard_normal(input_shape), rng)


@pytest.mark.parametrize("name", list(BN_LAYERS))
def test_batchnorm_matches_torch(name):
    """Three training steps (running statistics and num_batches_tracked compared after each), then eval."""
    torch_build, npsn_build, input_shape = BN_LAYERS[name]
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    theirs = torch_build()
    with torch.no_grad():  # a non-trivial affine map
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.normal_()
    ours = load_torch_state(npsn_build(), theirs)
    for _ in range(3):
        x = 3.0 * rng.standard_normal(input_shape) + 1.5
        compare_step(name, ours, theirs, x, rng)
        compare_buffers(name, ours, theirs)
    assert int(ours.num_batches_tracked) == 3
    theirs.eval()
    ours.eval()
    before = copy_buffers(ours)
    compare_step(name, ours, theirs, 3.0 * rng.standard_normal(input_shape) + 1.5, rng)
    compare_buffers(name, ours, theirs)
    for key, value in copy_buffers(ours).items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"{name}: eval changed {key}")


@pytest.mark.parametrize("name", list(SN_LAYERS))
def test_spectral_norm_matches_torch(name):
    """Training forwards run one power-iteration step from the same u, v in both; eval runs none.

    Between the two training steps both take the same SGD step, so the second power iteration
    runs on a changed weight. The gradient compared is torch's ``weight_orig.grad`` (Eq. 12).
    """
    torch_build, npsn_build, input_shape = SN_LAYERS[name]
    torch.manual_seed(2)
    rng = np.random.default_rng(2)
    theirs = torch_build()
    ours = load_torch_state(npsn_build(), theirs)
    for _ in range(2):
        before = copy_buffers(ours)
        compare_step(name, ours, theirs, rng.standard_normal(input_shape), rng)
        compare_buffers(name, ours, theirs)
        assert not np.array_equal(before["weight_u"], ours.weight_u), f"{name}: training forward did not update u"
        with torch.no_grad():
            for p in theirs.parameters():
                p -= 0.1 * p.grad
        for p in ours.parameters():
            p.data = p.data - 0.1 * p.grad
    theirs.eval()
    ours.eval()
    before = copy_buffers(ours)
    compare_step(name, ours, theirs, rng.standard_normal(input_shape), rng)
    compare_buffers(name, ours, theirs)
    for key, value in copy_buffers(ours).items():
        np.testing.assert_array_equal(value, before[key], err_msg=f"{name}: eval changed {key}")


# ---------------------------------------------------------------------------------- state_dict names
@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_state_dict_keys_match_torch(name):
    torch_build, npsn_build, _ = ALL_LAYERS[name]
    assert list(sorted(npsn_build().state_dict())) == list(sorted(torch_build().state_dict()))


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_npsn_state_dict_loads_into_torch(name):
    """npsn -> torch: a trained npsn layer's state_dict loads strictly into torch and computes the same."""
    torch_build, npsn_build, input_shape = ALL_LAYERS[name]
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    ours = npsn_build().to(dtype=np.float64)
    ours(to_npsn_layout(2.0 * rng.standard_normal(input_shape) + 0.5))  # moves BN's running stats, SN's u and v
    theirs = load_npsn_state(torch_build(), ours)
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), np.asarray(ours.state_dict()[key]), err_msg=f"{name}: {key}")
    # and the float32 state_dict of a fresh npsn layer loads into a float32 torch layer
    fresh = npsn_build()
    load_npsn_state(torch_build().float(), fresh)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal(input_shape)
    with torch.no_grad():
        y_torch = theirs(torch.from_numpy(x)).numpy()
    assert_close(name, "output after npsn -> torch", to_torch_layout(ours(to_npsn_layout(x).copy())), y_torch)


# ---------------------------------------------------------------------------------- default initialization
def _bound_ratio(array, bound):
    return float(np.max(np.abs(np.asarray(array, dtype=np.float64)))) / bound


@pytest.mark.parametrize("kind, make_torch, make_npsn, fan_in", [
    ("Linear", lambda: torch.nn.Linear(512, 256), lambda: npsn.Linear(512, 256), 512),
    ("Conv2d", lambda: torch.nn.Conv2d(64, 256, 3), lambda: npsn.Conv2d(64, 256, 3), 64 * 3 * 3),
    # torch's fan_in of a ConvTranspose2d weight (in, out, k, k) is weight.shape[1] * k * k = out * k * k
    ("ConvTranspose2d", lambda: torch.nn.ConvTranspose2d(64, 256, 4), lambda: npsn.ConvTranspose2d(64, 256, 4),
     256 * 4 * 4),
], ids=["Linear", "Conv2d", "ConvTranspose2d"])
def test_default_init_bounds_match_torch(kind, make_torch, make_npsn, fan_in):
    """Weight and bias are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in both: the largest |entry| reaches
    [0.95, 1] of the bound and never exceeds it (up to float32 rounding), and the standard deviations
    agree with bound / sqrt(3).

    With n uniform draws, P(max |w| < r bound) = r^n: for the weights (n > 10^5) even r = 0.999 is
    reached with certainty, which also catches a bound off by 1 %; the biases (n = 256) use r = 0.95.
    """
    torch.manual_seed(4)
    npsn.manual_seed(4)
    theirs, ours = make_torch(), make_npsn()
    bound = 1.0 / np.sqrt(fan_in)
    float32_slack = 1.0 + 1e-6
    for param in ("weight", "bias"):
        their_value = getattr(theirs, param).detach().numpy()
        our_value = getattr(ours, param).data
        assert our_value.shape == their_value.shape
        assert our_value.dtype == their_value.dtype == np.float32
        lowest_ratio = 0.999 if param == "weight" else 0.95
        for who, value in (("torch", their_value), ("npsn", our_value)):
            ratio = _bound_ratio(value, bound)
            assert lowest_ratio <= ratio <= float32_slack, f"{kind}.{param} ({who}): max|w| / bound = {ratio}"
        if param == "weight":
            # the sample std of > 10^5 uniform draws is within ~0.2 % of bound / sqrt(3)
            our_std, their_std = float(np.std(our_value)), float(np.std(their_value))
            assert abs(our_std / their_std - 1) < 0.01
            assert abs(our_std / (bound / np.sqrt(3)) - 1) < 0.01


@pytest.mark.parametrize("name", list(BN_LAYERS))
def test_batchnorm_defaults_match_torch(name):
    torch_build, npsn_build, _ = BN_LAYERS[name]
    theirs = torch_build().float()
    ours = npsn_build()
    their_state = torch_state_as_numpy(theirs)
    our_state = ours.state_dict()
    assert set(our_state) == set(their_state)
    for key, value in their_state.items():
        assert np.asarray(our_state[key]).dtype == value.dtype, key
        np.testing.assert_array_equal(our_state[key], value, err_msg=key)
    np.testing.assert_array_equal(ours.weight.data, 1.0)
    np.testing.assert_array_equal(ours.bias.data, 0.0)
    np.testing.assert_array_equal(ours.running_mean, 0.0)
    np.testing.assert_array_equal(ours.running_var, 1.0)
    assert ours.num_batches_tracked.shape == () and int(ours.num_batches_tracked) == 0
    assert (ours.eps, ours.momentum) == (theirs.eps, theirs.momentum)


# ---------------------------------------------------------------------------------- whole models
@pytest.mark.parametrize("model", ["cnn", "resnet"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_model_mirror_matches_npsn(model, training):
    """to_torch of a whole G and D (small width, float64): same names, outputs and gradients.

    Parameter gradients are relative to the model's largest gradient entry (grad_scale="module"):
    G's biases before a BatchNorm have an exact gradient of 0, leaving rounding noise on both sides.
    """
    G, D = build_gan(model, g_ch=8, d_ch=8, seed=5)
    rng = np.random.default_rng(5)
    inputs = {"G": rng.standard_normal((4, 128)), "D": rng.uniform(-1, 1, (4, 3, 32, 32))}
    for name, module in (("G", G), ("D", D)):
        module.to(dtype=np.float64).train(training)
        mirror = to_torch(module)
        assert sorted(mirror.state_dict()) == sorted(module.state_dict())
        assert mirror.training == training and all(m.training == training for m in mirror.modules())
        # G returns NCHW images and D takes them (their 2-D ends, z and logits, are never transposed)
        assert torch_reference.channels_last_boundaries(module) == {"G": (True, False), "D": (False, True)}[name]
        for step in range(2):  # in training mode the second step starts from stepped u, v and BN statistics
            errors = compare_forward_backward(module, inputs[name], torch_module=mirror, rng=step,
                                              grad_scale="module")
            assert len(errors) == 2 + len(list(module.parameters()))
            for what, err in errors.items():
                check_error(f"{model} {name}", what, err)
        compare_buffers(f"{model} {name}", module, mirror)


def test_mirror_keeps_requires_grad_and_rejects_unknown_layers():
    layer = npsn.Linear(3, 2)
    layer.requires_grad_(False)
    assert not any(p.requires_grad for p in to_torch(layer).parameters())

    class Doubler(npsn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(TypeError, match="Doubler"):
        to_torch(npsn.Sequential(npsn.Linear(3, 2), Doubler()))
    mirror = to_torch(npsn.Sequential(npsn.Linear(3, 2), Doubler()),
                      converters={Doubler: lambda m, convert: torch.nn.Identity()})
    assert isinstance(mirror[1], torch.nn.Identity)


def test_torch_reference_imports_without_torch(monkeypatch):
    """npsn never imports torch at load time; a function that needs it says so."""
    code = "import sys, npsn.testing.torch_reference, npsn.gan; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="needs PyTorch"):
        to_torch(npsn.Linear(3, 2))


# ---------------------------------------------------------------------------------- the paper's competing discriminators
# (issue 21) npsn's new layers against the mirror (to_torch): PyTorch's layer_norm, batch_norm and, for weight
# normalization, the weight normalized by autograd, with npsn's parameters. name -> (npsn builder, input shape in
# torch's layout).
METHOD_LAYERS = {
    "LayerNorm(images)": (lambda: npsn.LayerNorm(), (2, 3, 5, 4)),
    "LayerNorm(features)": (lambda: npsn.LayerNorm(), (6, 7)),
    "Bias(images)": (lambda: npsn.Bias(3), (2, 3, 4, 5)),
    "Bias(features)": (lambda: npsn.Bias(7), (6, 7)),
    "BatchNorm2d(affine=False)": (lambda: npsn.BatchNorm2d(3, affine=False), (4, 3, 5, 6)),
    "WeightNorm(Linear)": (lambda: npsn.WeightNorm(npsn.Linear(7, 5)), (6, 7)),
    "WeightNorm(Conv2d(k4,s2,p1))": (lambda: npsn.WeightNorm(npsn.Conv2d(3, 4, 4, 2, 1)), (2, 3, 8, 6)),
    "WeightNorm(ConvTranspose2d(k4,s2,p1))": (lambda: npsn.WeightNorm(npsn.ConvTranspose2d(3, 4, 4, 2, 1)),
                                              (2, 3, 4, 5)),
}


@pytest.mark.parametrize("name", list(METHOD_LAYERS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_method_layer_matches_torch(name, training):
    build, input_shape = METHOD_LAYERS[name]
    rng = np.random.default_rng(6)
    ours = build().to(dtype=np.float64).train(training)
    for p in ours.parameters():  # a bias that is not 0, a weight of any scale (WeightNorm removes it)
        p.data = 3.0 * rng.standard_normal(p.data.shape)
    theirs = to_torch(ours)
    for _ in range(2):  # BatchNorm's running statistics move in training mode
        compare_step(name, ours, theirs, 2.0 * rng.standard_normal(input_shape) + 0.5, rng)
        compare_buffers(name, ours, theirs)


def test_weight_norm_rows_are_unit_vectors():
    from npsn.nn.spectral_norm import reshape_weight_to_matrix

    for layer, rows in ((npsn.Conv2d(3, 4, 3), 4), (npsn.ConvTranspose2d(3, 5, 4, 2, 1), 5), (npsn.Linear(6, 2), 2)):
        wn = npsn.WeightNorm(layer)
        W = reshape_weight_to_matrix(wn.normalized_weight(), wn.dim)
        assert W.shape[0] == rows
        np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, rtol=1e-6)
    assert list(npsn.WeightNorm(npsn.Linear(6, 2)).state_dict()) == ["weight_v", "bias"]


@pytest.mark.parametrize("d_norm", ["none", "bn", "ln", "wn", "ortho"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_discriminator_of_each_method_matches_torch(d_norm, training):
    """The cnn D of each --d-norm (small width, float64): the same names, outputs and gradients as its mirror."""
    _, D = build_gan("cnn", g_ch=8, d_ch=8, seed=5, d_norm=d_norm)
    D.to(dtype=np.float64).train(training)
    mirror = to_torch(D)
    x = np.random.default_rng(5).uniform(-1, 1, (4, 3, 32, 32))
    for step in range(2):
        errors = compare_forward_backward(D, x, torch_module=mirror, rng=step, grad_scale="module")
        assert len(errors) == 2 + len(list(D.parameters()))
        for what, err in errors.items():
            check_error(f"cnn D ({d_norm})", what, err)
    compare_buffers(f"cnn D ({d_norm})", D, mirror)


# (loss, d_norm, weight clip): every D update the methods make, the gradient penalty on each D that supports it
D_UPDATES = [("wgan-gp", "none", 0.0), ("gan-gp", "none", 0.0), ("wgan-gp", "sn", 0.0), ("wgan-gp", "wn", 0.0),
             ("wgan-gp", "ortho", 0.0), ("nonsaturating", "ortho", 0.0), ("nonsaturating", "none", 0.01),
             ("wasserstein", "none", 0.01), ("nonsaturating", "bn", 0.0), ("nonsaturating", "ln", 0.0),
             ("nonsaturating", "wn", 0.0)]


@pytest.mark.parametrize("loss, d_norm, clip", D_UPDATES, ids=[f"{l}-{n}-clip{c}" for l, n, c in D_UPDATES])
def test_a_whole_discriminator_update_matches_autograd(loss, d_norm, clip):
    """Two D updates (loss, gradient penalty by torch.autograd.grad(create_graph=True), orthonormal penalty, Adam,
    clipping) of npsn and PyTorch from one state, float64: the objective, every parameter's gradient of the
    second update and every parameter after both agree to 1e-9 (torch_reference.TOLERANCE_FLOAT64)."""
    from npsn.gan.methods import discriminator_regularizers

    G, D = build_gan("cnn", g_ch=8, d_ch=8, seed=3, d_norm=d_norm)
    G.to(dtype=np.float64)
    D.to(dtype=np.float64)
    rng = np.random.default_rng(0)
    x, z = rng.uniform(-1, 1, (4, 3, 32, 32)), rng.standard_normal((4, 128))
    eps_rng = np.random.default_rng(1)
    regularizers = discriminator_regularizers(D, loss, d_norm, clip, lambda n: eps_rng.uniform(0, 1, n))
    errors = torch_reference.compare_discriminator_update(G, D, x, z, loss, regularizers, lr=1e-3, steps=2)
    assert len(errors) == 1 + 2 * len(list(D.parameters()))
    name = f"D update ({loss}, {d_norm}, clip {clip})"
    MAX_REL_ERR[name] = max(errors.values())
    worst = max(errors, key=errors.get)
    assert errors[worst] < torch_reference.TOLERANCE_FLOAT64, f"{name}: {worst} differs by {errors[worst]:.2e}"
    if clip:
        assert all(float(np.abs(p.data).max()) <= clip for n, p in D.named_parameters() if n.endswith("weight"))


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (8, 3, 1, 1), (1, 50), (6, 6)], ids=["wide", "tall", "row", "square"])
def test_orthonormal_penalty_matches_the_written_formula(shape):
    """P = ||W^T W - I||_F^2 - max(w - h, 0) and its gradient 4 W (W^T W - I), against autograd of the formula."""
    from npsn.gan.orthonormal import orthonormal_penalty

    W = np.random.default_rng(8).standard_normal(shape) * 0.4
    value, grad = orthonormal_penalty(W)
    theirs = torch.tensor(W, requires_grad=True)
    M = theirs.reshape(shape[0], -1)
    literal = ((M.T @ M - torch.eye(M.shape[1], dtype=M.dtype)) ** 2).sum()
    literal.backward()
    assert_close("orthonormal penalty", "value", value + max(M.shape[1] - M.shape[0], 0), literal.detach())
    assert_close("orthonormal penalty", "gradient", grad, theirs.grad)


@pytest.mark.parametrize("method", ["weight-clipping", "gan-gp", "wgan-gp", "bn", "ln", "wn", "orthonormal"])
def test_training_with_each_method_matches_pytorch(method, tmp_path):
    """Two iterations (n_dis 2) of a Trainer of each paper method and its TorchTrainer mirror, from the same draws."""
    from npsn.gan.methods import PAPER_METHODS
    from npsn.gan.trainer import Trainer, preset_config

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)
    config = preset_config("paper-cnn-nonsaturating", g_ch=16, d_ch=8, batch_size=4, n_dis=2, iterations=10,
                           log_every=1, checkpoint_every=100, sample_every=0, **PAPER_METHODS[method])
    trainer = Trainer(config, images, str(tmp_path / "run"))
    mirror = torch_reference.TorchTrainer(trainer)
    x = np.tanh(rng.standard_normal((4, 3, 32, 32))).astype(np.float32)
    z = rng.standard_normal((4, config.z_dim)).astype(np.float32)
    check = torch_reference.compare_training(trainer, mirror, x, z)
    # float32: the losses within TOLERANCE_LOSSES (Adam's first steps turn the rounding of D's tiny initial
    # gradients into steps of lr); the float64 test above holds a whole D update to 1e-9
    assert check["ok"], check
