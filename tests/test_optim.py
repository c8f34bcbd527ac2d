"""Optimizers: Adam and SGD against hand-computed trajectories, skipping, lr changes, exact resume."""
import io
import math

import numpy as np
import pytest

from npsn import backend
from npsn.nn.module import Parameter
from npsn.optim import SGD, Adam


def quadratic_grad(p):
    """Gradient of L(p) = sum(p^2): 2 p, stored as a fresh array in ``p.grad``."""
    p.grad = 2 * p.data


def run(optimizer, params, steps):
    """``steps`` rounds of: zero_grad, gradient of sum(p^2) for each parameter, step."""
    for _ in range(steps):
        optimizer.zero_grad()
        for p in params:
            quadratic_grad(p)
        optimizer.step()


def adam_reference(p0, steps, lr, beta1, beta2, eps, weight_decay=0.0, lrs=None):
    """Adam on L(p) = p^2 (gradient 2 p) for one scalar, in plain Python floats; returns [p_1, ..., p_steps]."""
    p, m, v, trajectory = p0, 0.0, 0.0, []
    for t in range(1, steps + 1):
        step_lr = lrs[t - 1] if lrs is not None else lr
        g = 2 * p + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = math.sqrt(v) / math.sqrt(1 - beta2**t) + eps
        p = p - step_lr / (1 - beta1**t) * m / denom
        trajectory.append(p)
    return trajectory


# ---------------------------------------------------------------------- Adam
def test_adam_matches_a_trajectory_written_out_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p = Parameter(np.array([1.0]))
    adam = Adam([p], lr=lr, betas=(b1, b2), eps=eps)

    # step 1: g = 2, m = 0.2, v = 0.004
    g1 = 2 * 1.0
    m1 = (1 - b1) * g1
    v1 = (1 - b2) * g1**2
    p1 = 1.0 - lr / (1 - b1) * m1 / (math.sqrt(v1) / math.sqrt(1 - b2) + eps)
    assert p1 == pytest.approx(1.0 - lr, abs=1e-8)  # the first Adam step has length ~lr
    # step 2
    g2 = 2 * p1
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = b2 * v1 + (1 - b2) * g2**2
    p2 = p1 - lr / (1 - b1**2) * m2 / (math.sqrt(v2) / math.sqrt(1 - b2**2) + eps)
    # step 3
    g3 = 2 * p2
    m3 = b1 * m2 + (1 - b1) * g3
    v3 = b2 * v2 + (1 - b2) * g3**2
    p3 = p2 - lr / (1 - b1**3) * m3 / (math.sqrt(v3) / math.sqrt(1 - b2**3) + eps)

    for expected in (p1, p2, p3):
        run(adam, [p], 1)
        assert abs(p.data[0] - expected) < 1e-12
    assert adam.state[0]["step"] == 3
    assert abs(adam.state[0]["exp_avg"][0] - m3) < 1e-12
    assert abs(adam.state[0]["exp_avg_sq"][0] - v3) < 1e-12


@pytest.mark.parametrize(
    "betas, weight_decay",
    [((0.9, 0.999), 0.0), ((0.0, 0.9), 0.0), ((0.5, 0.999), 0.0), ((0.9, 0.999), 0.1), ((0.0, 0.9), 0.05)],
)
def test_adam_two_element_parameter_matches_reference(betas, weight_decay):
    start = [1.5, -0.7]
    p = Parameter(np.array(start))
    adam = Adam([p], lr=0.05, betas=betas, eps=1e-8, weight_decay=weight_decay)
    expected = [adam_reference(x, 4, 0.05, betas[0], betas[1], 1e-8, weight_decay) for x in start]
    for t in range(4):
        run(adam, [p], 1)
        np.testing.assert_allclose(p.data, [expected[0][t], expected[1][t]], rtol=0, atol=1e-12)


def test_adam_updates_in_place_keeps_dtype_and_leaves_the_gradient_alone():
    p = Parameter(np.array([1.0, -2.0], dtype=np.float32))
    p.grad = np.array([0.5, 0.25], dtype=np.float32)
    grad_before = p.grad.copy()
    adam = Adam([p], lr=0.1, weight_decay=0.5)  # p.data becomes a view of the optimizer's flat buffer
    data_before = p.data
    adam.step()
    np.testing.assert_array_equal(p.grad, grad_before)
    assert p.data is data_before
    assert p.data.dtype == np.float32
    assert adam.state[0]["exp_avg"].dtype == np.float32 and adam.state[0]["exp_avg_sq"].dtype == np.float32


def test_parameters_without_gradient_are_skipped_and_keep_their_step_count():
    a = Parameter(np.array([1.0]))
    b = Parameter(np.array([-2.0]))
    adam = Adam([a, b], lr=0.1, betas=(0.9, 0.999))
    run(adam, [a, b], 1)  # both step (t = 1)
    adam.zero_grad()
    quadratic_grad(a)  # b.grad stays None
    b_before = b.data.copy()
    adam.step()
    np.testing.assert_array_equal(b.data, b_before)
    assert adam.state[0]["step"] == 2 and adam.state[1]["step"] == 1
    run(adam, [a, b], 1)  # a at t = 3, b at t = 2
    assert abs(a.data[0] - adam_reference(1.0, 3, 0.1, 0.9, 0.999, 1e-8)[-1]) < 1e-12
    assert abs(b.data[0] - adam_reference(-2.0, 2, 0.1, 0.9, 0.999, 1e-8)[-1]) < 1e-12


def test_a_parameter_never_given_a_gradient_gets_no_state():
    a, b = Parameter(np.array([1.0])), Parameter(np.array([2.0]))
    adam = Adam([a, b], lr=0.1)
    quadratic_grad(a)
    adam.step()
    assert adam.state[1] == {}
    assert not any(key.startswith("state.1.") for key in adam.state_dict())
    assert b.data[0] == 2.0


def test_zero_grad_sets_gradients_to_none():
    params = [Parameter(np.ones(2)), Parameter(np.ones(3))]
    for p in params:
        quadratic_grad(p)
    SGD(params, lr=0.1).zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.1), lambda ps: SGD(ps, lr=0.1, momentum=0.9)])
def test_lr_change_takes_effect_on_the_next_step(make):
    p = Parameter(np.array([1.0, -1.0]))
    optimizer = make([p])
    run(optimizer, [p], 1)
    optimizer.lr = 0.0
    before = p.data.copy()
    run(optimizer, [p], 1)
    np.testing.assert_array_equal(p.data, before)


def test_adam_follows_a_changing_lr():
    lrs = [0.1, 0.075, 0.05, 0.025]
    p = Parameter(np.array([1.0]))
    adam = Adam([p], lr=lrs[0], betas=(0.0, 0.9))
    for lr in lrs:
        adam.lr = lr
        run(adam, [p], 1)
    expected = adam_reference(1.0, 4, None, 0.0, 0.9, 1e-8, lrs=lrs)[-1]
    assert abs(p.data[0] - expected) < 1e-12


# ---------------------------------------------------------------------- SGD
def test_sgd_without_momentum():
    p = Parameter(np.array([1.0, -3.0]))
    sgd = SGD([p], lr=0.1)
    run(sgd, [p], 2)
    # p <- p - 0.1 * 2p = 0.8 p, twice
    np.testing.assert_allclose(p.data, [0.64, -1.92], rtol=0, atol=1e-15)
    assert sgd.state_dict() == {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}


def test_sgd_momentum_by_hand():
    lr, mu = 0.1, 0.9
    p = Parameter(np.array([1.0]))
    sgd = SGD([p], lr=lr, momentum=mu)
    # step 1: b = g = 2
    b1 = 2 * 1.0
    p1 = 1.0 - lr * b1
    # step 2: b = mu b + g
    b2 = mu * b1 + 2 * p1
    p2 = p1 - lr * b2
    # step 3
    b3 = mu * b2 + 2 * p2
    p3 = p2 - lr * b3
    for expected in (p1, p2, p3):
        run(sgd, [p], 1)
        assert abs(p.data[0] - expected) < 1e-15
    assert abs(sgd.state[0]["momentum_buffer"][0] - b3) < 1e-15


def test_sgd_nesterov_by_hand():
    lr, mu = 0.1, 0.9
    p = Parameter(np.array([1.0]))
    sgd = SGD([p], lr=lr, momentum=mu, nesterov=True)
    # step 1: b = g; p -= lr (g + mu b)
    g1 = 2 * 1.0
    b1 = g1
    p1 = 1.0 - lr * (g1 + mu * b1)
    # step 2
    g2 = 2 * p1
    b2 = mu * b1 + g2
    p2 = p1 - lr * (g2 + mu * b2)
    # step 3
    g3 = 2 * p2
    b3 = mu * b2 + g3
    p3 = p2 - lr * (g3 + mu * b3)
    for expected in (p1, p2, p3):
        run(sgd, [p], 1)
        assert abs(p.data[0] - expected) < 1e-15


def test_sgd_dampening_and_weight_decay_by_hand():
    lr, mu, tau, wd = 0.1, 0.5, 0.25, 0.2
    p = Parameter(np.array([2.0]))
    sgd = SGD([p], lr=lr, momentum=mu, dampening=tau, weight_decay=wd)
    grad_of = lambda x: 2 * x + wd * x  # noqa: E731
    # step 1: b = g (the first buffer is not dampened)
    b1 = grad_of(2.0)
    p1 = 2.0 - lr * b1
    # step 2: b = mu b + (1 - tau) g
    b2 = mu * b1 + (1 - tau) * grad_of(p1)
    p2 = p1 - lr * b2
    for expected in (p1, p2):
        run(sgd, [p], 1)
        assert abs(p.data[0] - expected) < 1e-15


def test_sgd_momentum_buffer_does_not_alias_the_gradient():
    p = Parameter(np.array([1.0]))
    sgd = SGD([p], lr=0.1, momentum=0.9)
    quadratic_grad(p)
    sgd.step()
    p.grad[...] = 123.0
    assert sgd.state[0]["momentum_buffer"][0] == 2.0


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "make",
    [
        lambda ps: Adam(ps, lr=-1.0),
        lambda ps: Adam(ps, betas=(1.0, 0.9)),
        lambda ps: Adam(ps, betas=(0.9, -0.1)),
        lambda ps: Adam(ps, eps=-1e-8),
        lambda ps: Adam(ps, weight_decay=-0.1),
        lambda ps: SGD(ps, lr=0.1, momentum=-0.5),
        lambda ps: SGD(ps, lr=0.1, nesterov=True),
        lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        lambda ps: Adam([], lr=0.1),
    ],
)
def test_invalid_settings_raise(make):
    with pytest.raises(ValueError):
        make([Parameter(np.ones(1))])


def test_non_parameters_are_rejected():
    with pytest.raises(TypeError, match="Parameter"):
        Adam([np.ones(3)])


# ---------------------------------------------------------------------- state dict
def savez_round_trip(state):
    """The state dict written with np.savez and read back, as a checkpoint would."""
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer) as archive:
        return {key: archive[key] for key in archive.files}


def make_params(seed):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.normal(size=(3, 2))), Parameter(rng.normal(size=(4,)))]


def copy_params(params):
    return [Parameter(p.data.copy()) for p in params]


OPTIMIZERS = {
    "adam": lambda ps: Adam(ps, lr=0.01, betas=(0.5, 0.99), eps=1e-7, weight_decay=0.01),
    "adam_beta1_0": lambda ps: Adam(ps, lr=0.02, betas=(0.0, 0.9)),
    "sgd_momentum": lambda ps: SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd_nesterov": lambda ps: SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
}


@pytest.mark.parametrize("through_savez", [False, True])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_from_state_dict_is_exact(name, through_savez):
    make = OPTIMIZERS[name]
    uninterrupted = make_params(0)
    run(make(uninterrupted), uninterrupted, 5)

    first = make_params(0)
    optimizer = make(first)
    run(optimizer, first, 3)
    state = optimizer.state_dict()
    if through_savez:
        state = savez_round_trip(state)

    resumed = copy_params(first)
    # built with other settings on purpose: load_state_dict must restore them
    other = Adam(resumed, lr=0.5) if name.startswith("adam") else SGD(resumed, lr=0.5, momentum=0.1)
    other.load_state_dict(state)
    run(other, resumed, 2)
    for p, q in zip(uninterrupted, resumed):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_is_flat_with_torch_names_and_scalars():
    params = make_params(1)
    adam = Adam(params, lr=0.01, betas=(0.0, 0.9), eps=1e-6, weight_decay=0.5)
    run(adam, params, 2)
    state = adam.state_dict()
    assert set(state) == {
        "lr", "beta1", "beta2", "eps", "weight_decay",
        "state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq",
        "state.1.step", "state.1.exp_avg", "state.1.exp_avg_sq",
    }  # fmt: skip
    assert (state["lr"], state["beta1"], state["beta2"], state["eps"], state["weight_decay"]) == (0.01, 0.0, 0.9, 1e-6, 0.5)
    assert state["state.0.step"] == 2 and isinstance(state["state.0.step"], int)
    assert state["state.1.exp_avg"].shape == (4,)


def test_state_dict_is_a_snapshot():
    params = make_params(2)
    adam = Adam(params, lr=0.1)
    run(adam, params, 1)
    state = adam.state_dict()
    saved = state["state.0.exp_avg"].copy()
    run(adam, params, 1)
    np.testing.assert_array_equal(state["state.0.exp_avg"], saved)
    assert state["state.0.step"] == 1


def test_load_state_dict_restores_hyperparameters_and_copies_arrays():
    params = make_params(3)
    adam = Adam(params, lr=0.01, betas=(0.5, 0.99))
    run(adam, params, 1)
    state = adam.state_dict()
    other = Adam(copy_params(params), lr=1.0)
    other.load_state_dict(state)
    assert (other.lr, other.betas, other.eps, other.weight_decay) == (0.01, (0.5, 0.99), 1e-8, 0.0)
    assert other.state[0]["exp_avg"] is not state["state.0.exp_avg"]
    np.testing.assert_array_equal(other.state[0]["exp_avg"], state["state.0.exp_avg"])


def test_load_state_dict_casts_moments_to_the_parameter_dtype():
    params = make_params(4)
    adam = Adam(params, lr=0.01)
    run(adam, params, 1)
    params32 = [Parameter(p.data.astype(np.float32)) for p in params]
    other = Adam(params32, lr=0.01)
    other.load_state_dict(savez_round_trip(adam.state_dict()))
    assert other.state[1]["exp_avg_sq"].dtype == np.float32
    assert type(other.state[1]["step"]) is int and type(other.lr) is float


def test_load_state_dict_clears_state_of_parameters_not_in_it():
    params = make_params(5)
    fresh_state = Adam(params, lr=0.01).state_dict()
    adam = Adam(params, lr=0.01)
    run(adam, params, 2)
    adam.load_state_dict(fresh_state)
    assert adam.state == [{}, {}]


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda s: s.pop("beta2"), KeyError),
        (lambda s: s.pop("state.1.exp_avg_sq"), KeyError),
        (lambda s: s.__setitem__("state.2.step", 1), KeyError),
        (lambda s: s.__setitem__("state.0.momentum_buffer", np.zeros((3, 2))), KeyError),
        (lambda s: s.__setitem__("momentum", 0.9), KeyError),
        (lambda s: s.__setitem__("state.0.exp_avg", np.zeros((2, 3))), ValueError),
        (lambda s: s.__setitem__("beta1", 1.5), ValueError),
    ],
)
def test_load_state_dict_rejects_bad_state_and_changes_nothing(edit, error):
    params = make_params(6)
    adam = Adam(params, lr=0.01)
    run(adam, params, 1)
    state = adam.state_dict()
    edit(state)
    target = Adam(copy_params(params), lr=0.3)
    with pytest.raises(error):
        target.load_state_dict(state)
    assert target.lr == 0.3 and target.beta1 == 0.9 and target.state == [{}, {}]


# ---------------------------------------------------------------------- optional cross-checks
def test_matches_torch_adam_and_sgd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    start = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(6)]
    settings = [
        (Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.0, 0.9), eps=1e-8, weight_decay=0.1)),
        (Adam, torch.optim.Adam, dict(lr=0.001, betas=(0.5, 0.999), eps=1e-6)),
        (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
        (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ]
    for ours_cls, torch_cls, kwargs in settings:
        p = Parameter(start.copy())
        tp = torch.nn.Parameter(torch.tensor(start.copy(), dtype=torch.float64))
        ours, theirs = ours_cls([p], **kwargs), torch_cls([tp], **kwargs)
        for g in grads:
            p.grad = g.copy()
            tp.grad = torch.tensor(g, dtype=torch.float64)
            ours.step()
            theirs.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_device_matches_numpy_and_resumes_from_a_host_checkpoint(name, device):
    make = OPTIMIZERS[name]
    host = make_params(8)
    run(make(host), host, 4)

    params = [Parameter(backend.to_device(p.data, device)) for p in make_params(8)]
    optimizer = make(params)
    run(optimizer, params, 2)
    host_state = {k: backend.to_numpy(v) if hasattr(v, "shape") else v for k, v in optimizer.state_dict().items()}
    resumed = [Parameter(p.data.copy()) for p in params]
    other = make(resumed)
    other.load_state_dict(savez_round_trip(host_state))
    for state in other.state:
        for key in other.STATE_ARRAYS:
            assert backend.device_of(state[key]) == device
    run(other, resumed, 2)
    for h, d in zip(host, resumed):
        np.testing.assert_allclose(backend.to_numpy(d.data), h.data, rtol=1e-12, atol=1e-14)
