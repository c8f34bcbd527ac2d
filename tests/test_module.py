"""The module protocol: PyTorch's names and behaviours without autograd."""
import numpy as np
import pytest

import npsn
from npsn.backend import to_device, to_numpy


def small_net(rng):
    return npsn.Sequential(
        npsn.nn.spectral_norm(npsn.Conv2d(3, 4, 3, padding=1, rng=rng), rng=rng),
        npsn.BatchNorm2d(4),
        npsn.ReLU(),
        npsn.Flatten(),
        npsn.Linear(4 * 4 * 4, 2, rng=rng),
    )


def test_names_follow_pytorch():
    net = small_net(np.random.default_rng(0))
    assert [n for n, _ in net.named_parameters()] == ["0.weight_orig", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert list(net.state_dict()) == [
        "0.weight_orig", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias",
        "0.weight_u", "0.weight_v", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert net.state_dict()["1.num_batches_tracked"].dtype == np.int64


def test_backward_without_forward_is_a_clear_error():
    layer = npsn.Linear(3, 2)
    with pytest.raises(npsn.BackwardWithoutForwardError, match="without a matching forward"):
        layer.backward(np.ones((1, 2), np.float32))
    layer(np.ones((1, 3), np.float32))
    layer.backward(np.ones((1, 2), np.float32))
    with pytest.raises(npsn.BackwardWithoutForwardError):  # a forward is consumed by its backward
        layer.backward(np.ones((1, 2), np.float32))


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(0)
    layer = npsn.Linear(3, 2, rng=rng)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    g = np.ones((4, 2), np.float32)
    layer(x)
    layer.backward(g)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


def test_requires_grad_false_skips_parameter_gradients_but_not_input_gradient():
    rng = np.random.default_rng(0)
    net = small_net(rng)
    net.requires_grad_(False)
    x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    y = net(x)
    gx = net.backward(np.ones_like(y))
    assert gx.shape == x.shape
    assert all(p.grad is None for p in net.parameters())


def test_train_eval_propagate():
    net = small_net(np.random.default_rng(0))
    net.eval()
    assert not any(m.training for m in net.modules()) and not net[0].module.training
    net.train()
    assert all(m.training for m in net.modules()) and net[0].module.training


def test_state_dict_round_trip_and_strictness(device):
    rng = np.random.default_rng(0)
    net = small_net(rng).to(device)
    x = to_device(rng.standard_normal((2, 4, 4, 3)).astype(np.float32), device)
    net(x)  # moves running stats and u, v away from their initial values
    state = {k: to_numpy(v) for k, v in net.state_dict().items()}
    other = small_net(np.random.default_rng(1)).to(device)
    other.load_state_dict(state)
    net.eval()
    other.eval()
    np.testing.assert_array_equal(to_numpy(other(x)), to_numpy(net(x)))
    with pytest.raises(KeyError, match="missing keys"):
        other.load_state_dict({k: v for k, v in state.items() if k != "4.bias"})
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({**state, "4.bias": np.zeros(3, np.float32)})


def test_to_casts_floats_and_keeps_integer_buffers():
    net = small_net(np.random.default_rng(0)).to(dtype=np.float64)
    state = net.state_dict()
    assert state["0.weight_orig"].dtype == np.float64 and state["1.running_var"].dtype == np.float64
    assert state["1.num_batches_tracked"].dtype == np.int64


def _input_grad_cases(rng):
    return {
        "Linear": (npsn.Linear(5, 3, rng=rng), (4, 5)),
        "Conv2d (gather)": (npsn.Conv2d(3, 4, 3, padding=1, rng=rng), (2, 5, 5, 3)),
        "Conv2d (flipped scatter)": (npsn.Conv2d(4, 2, 3, padding=1, rng=rng), (2, 5, 5, 4)),
        "ConvTranspose2d": (npsn.ConvTranspose2d(3, 2, 4, 2, 1, rng=rng), (2, 3, 3, 3)),
        "SN(Conv2d)": (npsn.nn.spectral_norm(npsn.Conv2d(3, 4, 4, 2, 1, rng=rng), rng=rng), (2, 6, 6, 3)),
        "Sequential": (npsn.Sequential(npsn.ToChannelsLast(), npsn.nn.spectral_norm(npsn.Conv2d(3, 4, 3, rng=rng), rng=rng),
                                       npsn.LeakyReLU(0.1), npsn.Flatten(), npsn.Linear(36, 1, rng=rng)), (2, 3, 5, 5)),
    }


@pytest.mark.parametrize("name", list(_input_grad_cases(np.random.default_rng(0))))
def test_backward_without_input_grad_gives_the_same_parameter_gradients(name):
    """input_grad(module, False): backward returns None, parameter gradients are unchanged, the flag is restored."""
    module, shape = _input_grad_cases(np.random.default_rng(0))[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    module.to("cpu", np.float64).eval()  # eval: SN's u and v stay fixed between the two forwards
    g = rng.standard_normal(module(x).shape)
    full = module.backward(g)
    assert full is not None and full.shape == x.shape
    expected = {n: p.grad.copy() for n, p in module.named_parameters()}
    module.zero_grad()
    module(x)
    with npsn.input_grad(module, False):
        assert module.backward(g) is None
    assert module.needs_input_grad and "needs_input_grad" not in module.__dict__
    for n, p in module.named_parameters():
        np.testing.assert_array_equal(p.grad, expected[n], err_msg=n)
