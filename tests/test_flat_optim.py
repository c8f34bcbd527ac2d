"""The optimizers' flat buffer: one kernel for every parameter, bit for bit the per-parameter update, never stale views."""
import numpy as np
import pytest

from npsn import backend
from npsn.gan.models import build_gan
from npsn.nn.flat import FlatParameters
from npsn.nn.module import Parameter
from npsn.optim import SGD, Adam


def make_params(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.normal(size=shape).astype(dtype)) for shape in [(3, 2, 2), (5,), (4, 3), (1,)]]


def set_grads(params, seed):
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad = backend.to_device(rng.normal(size=p.data.shape).astype(p.data.dtype), backend.device_of(p.data))


def per_parameter_adam(params, **settings):
    """Adam, one optimizer per parameter: the per-parameter path (a one-element list is still flat, so
    this checks the fused kernel over all parameters against the same kernel on each alone)."""
    optimizers = [Adam([p], **settings) for p in params]

    def step():
        for o in optimizers:
            o.step()
    return step


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_flat_adam_is_bit_identical_to_the_update_of_each_parameter(weight_decay):
    settings = dict(lr=1e-2, betas=(0.5, 0.999), eps=1e-7, weight_decay=weight_decay)
    together, alone = make_params(0), make_params(0)
    adam = Adam(together, **settings)
    step_alone = per_parameter_adam(alone, **settings)
    for k in range(4):
        set_grads(together, k)
        set_grads(alone, k)
        adam.step()
        step_alone()
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.data, b.data)
    assert all(p.data.base is adam.flat.data for p in together)


def test_the_fused_step_is_the_per_parameter_step_after_a_skipped_parameter():
    """Step counts that differ take the per-parameter path; the moments stay views of the flat arrays."""
    params, reference = make_params(1), make_params(1)
    adam, step_alone = Adam(params, lr=0.1), per_parameter_adam(reference, lr=0.1)
    set_grads(params, 0)
    set_grads(reference, 0)
    params[1].grad = reference[1].grad = None  # parameter 1 skips the first step
    adam.step()
    step_alone()
    assert adam.state[1] == {}
    for k in range(1, 3):
        set_grads(params, k)
        set_grads(reference, k)
        adam.step()
        step_alone()
    assert [s["step"] for s in adam.state] == [3, 2, 3, 3]
    for p, r in zip(params, reference):
        np.testing.assert_array_equal(p.data, r.data)
    m, v = adam.moments
    assert adam.state[2]["exp_avg"].base is m and adam.state[2]["exp_avg_sq"].base is v


def test_flat_gradient_and_step_with_it():
    params = make_params(2)
    adam = Adam(params, lr=0.1)
    set_grads(params, 3)
    g = adam.flat_gradient()
    np.testing.assert_array_equal(g, np.concatenate([p.grad.ravel() for p in params]))
    twin = make_params(2)
    twin_adam = Adam(twin, lr=0.1)
    set_grads(twin, 3)
    for p in params:
        p.grad = None  # step(g) reads the flat gradient, not .grad
    adam.step(g)
    twin_adam.step()
    for p, q in zip(params, twin):
        np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="no gradient"):
        adam.flat_gradient()
    with pytest.raises(ValueError, match="expected shape"):
        adam.step(g[1:])


def test_a_rebound_parameter_is_adopted_before_the_next_step():
    """`p.data = new` (what Module.to and load_state_dict do) is never lost behind a stale view."""
    params = make_params(3)
    adam = Adam(params, lr=0.1)
    set_grads(params, 0)
    adam.step()
    new = np.full((5,), 7.0, np.float32)
    params[1].data = new
    twin = make_params(3)
    twin_adam = Adam(twin, lr=0.1)
    set_grads(twin, 0)
    twin_adam.step()
    twin[1].data[...] = 7.0  # the same values, written in place
    set_grads(params, 1)
    set_grads(twin, 1)
    adam.step()
    twin_adam.step()
    for p, q in zip(params, twin):
        np.testing.assert_array_equal(p.data, q.data)
        assert p.data.base is adam.flat.data
    params[0].data = np.zeros((2, 2))
    with pytest.raises(ValueError, match="rebound to shape"):
        adam.step()


def test_model_to_float64_after_the_optimizer_moves_parameters_and_moments():
    G, _ = build_gan("cnn", g_ch=16, d_ch=8, seed=0)
    adam = Adam(G.parameters(), lr=1e-3)
    for p in G.parameters():
        p.grad = np.ones_like(p.data)
    adam.step()
    G.to(dtype=np.float64)
    for p in G.parameters():
        p.grad = np.ones_like(p.data)
    adam.step()
    assert adam.flat.data.dtype == np.float64 and adam.moments[0].dtype == np.float64
    assert all(p.data.base is adam.flat.data for p in G.parameters())
    assert adam.state[0]["exp_avg"].base is adam.moments[0]


def test_mixed_dtypes_fall_back_to_one_parameter_at_a_time():
    a, b = Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float64))
    assert not FlatParameters.supports([a, b])
    adam = Adam([a, b], lr=0.1)
    a.grad, b.grad = np.ones(3, np.float32), np.ones(2, np.float64)
    adam.step()
    assert adam.flat is None and a.data.dtype == np.float32 and b.data.dtype == np.float64
    with pytest.raises(ValueError, match="no flat buffer"):
        adam.flat_gradient()


def test_sgd_shares_the_flat_buffer():
    params = make_params(4)
    sgd = SGD(params, lr=0.1, momentum=0.9)
    set_grads(params, 0)
    expected = [p.data - 0.1 * p.grad for p in params]
    sgd.step()
    for p, e in zip(params, expected):
        np.testing.assert_array_equal(p.data, e)
        assert p.data.base is sgd.flat.data


def test_load_state_dict_fills_the_flat_moments(device):
    params = [Parameter(backend.to_device(p.data, device)) for p in make_params(5)]
    adam = Adam(params, lr=0.1)
    for k in range(2):
        set_grads(params, k)
        adam.step()
    state = {k: backend.to_numpy(v) if hasattr(v, "shape") else v for k, v in adam.state_dict().items()}
    resumed = [Parameter(p.data.copy()) for p in params]
    other = Adam(resumed, lr=0.1)
    other.load_state_dict(state)
    for i, s in enumerate(other.state):
        assert s["exp_avg"].base is other.moments[0] and s["exp_avg_sq"].base is other.moments[1]
        np.testing.assert_array_equal(backend.to_numpy(s["exp_avg"]), state[f"state.{i}.exp_avg"])
    set_grads(params, 2)
    set_grads(resumed, 2)
    adam.step()
    other.step()
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(backend.to_numpy(p.data), backend.to_numpy(q.data))
