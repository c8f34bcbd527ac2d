"""Optimizers over a list of :class:`~npsn.nn.module.Parameter` s, with PyTorch's update rules.

:class:`Adam` and :class:`SGD` reproduce ``torch.optim.Adam`` (without ``amsgrad``) and
``torch.optim.SGD`` step for step:

* ``step()`` updates each parameter's ``.data`` in place from its ``.grad``; a parameter
  whose ``.grad`` is ``None`` is skipped and its state (e.g. Adam's step count) does not
  advance;
* ``zero_grad()`` sets every ``.grad`` to ``None`` (PyTorch's ``set_to_none=True``);
* ``lr`` is a plain attribute a trainer may change between steps (e.g. linear decay);
* ``state_dict()`` is a *flat* ``{str: array or Python scalar}`` dict, so a checkpoint can
  write it with ``np.savez``; ``load_state_dict()`` restores hyperparameters and per-parameter
  state so that training resumes exactly. Per-parameter keys are ``"state.{i}.{name}"``, with
  ``i`` the parameter's index in the list given to the constructor and PyTorch's names
  (``step``, ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``).

Unlike PyTorch, ``state_dict()`` returns *copies* of the state arrays: a snapshot that later
steps do not change.

**One flat buffer** (PyTorch's foreach/fused optimizers). When the parameters share one dtype and
device, the optimizer puts them in one flat array (:class:`~npsn.nn.flat.FlatParameters`: each
``.data`` becomes a view of its slice) and :class:`Adam` keeps its moments flat too, so a step on
a model whose parameters all have gradients at the same step count is one ``concatenate`` of the
gradients and one elementwise kernel, whatever the number of layers. Other steps (some
``.grad`` None, step counts that differ) go parameter by parameter through views of the same
arrays, with the same arithmetic: every element gets the same bits either way.
``flat_gradient()`` returns the concatenated gradient and ``step(flat_grad)`` takes one: the
place where a data-parallel run reduces the gradient across processes::

    g = opt.flat_gradient()     # every parameter's .grad, flattened, in parameter order
    ...                         # e.g. an allreduce of g, in place
    opt.step(g)                 # the update from g (every parameter steps)
"""
import math

from npsn import backend
from npsn.backend import elementwise, get_array_module
from npsn.nn.flat import FlatParameters
from npsn.nn.module import Parameter


class Optimizer:
    """Shared machinery: the parameter list, ``lr``, ``zero_grad``, ``step`` and the flat state dict.

    Subclasses set
        HYPERPARAMETERS: ``{name: type}`` of the attributes saved in the state dict;
        STATE_SCALARS: ``{name: type}`` of per-parameter Python scalars (e.g. ``step``);
        STATE_ARRAYS: names of per-parameter arrays shaped like the parameter;
    and implement ``_check_hyperparameters()`` and ``_update(i, param, grad, state)``.

    Invariant between calls: ``flat`` is None (parameters of mixed dtypes or devices) or a
    :class:`~npsn.nn.flat.FlatParameters` of ``params``, whose views a step first re-adopts should a
    parameter have been rebound (``Module.to``, ``load_state_dict``, ``p.data = ...``).
    """

    HYPERPARAMETERS = {"lr": float}
    STATE_SCALARS = {}
    STATE_ARRAYS = ()

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer parameter {i} is a {type(p).__name__}, expected npsn.nn.module.Parameter")
        self.lr = lr
        # state[i]: dict of parameter i's state; empty until its first step.
        self.state = [{} for _ in self.params]
        # every .data a view of one flat array, when the parameters allow it
        self.flat = FlatParameters(self.params) if FlatParameters.supports(self.params) else None

    @property
    def lr(self):
        """The learning rate used by the next :meth:`step` (a Python float, >= 0)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        value = float(value)
        if not value >= 0.0:
            raise ValueError(f"invalid learning rate {value}: must be >= 0")
        self._lr = value

    def zero_grad(self):
        """Set every parameter's ``.grad`` to ``None``."""
        for p in self.params:
            p.grad = None

    def flat_gradient(self):
        """Every parameter's ``.grad``, flattened and concatenated in parameter order: one new 1-D array.

        The array :meth:`step` takes as ``flat_grad`` (a data-parallel run reduces it across processes
        in between). Needs the flat buffer (parameters of one dtype and device) and every ``.grad`` set.
        """
        if self.flat is None:
            raise ValueError("flat_gradient: the parameters do not share one dtype and device (no flat buffer)")
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise ValueError(f"flat_gradient: parameters {missing} have no gradient")
        self._adopt()
        return self.flat.gather_grads()

    def step(self, flat_grad=None):
        """Update, in place, every parameter that has a gradient; skip those whose ``.grad`` is None.

        ``flat_grad`` (optional): the gradient of every parameter as one flat array laid out as
        :meth:`flat_gradient`'s; then every parameter steps from its slice and ``.grad`` is not read.
        """
        self._adopt()
        if flat_grad is not None:
            self._check_flat_grad(flat_grad)
            grads = [self.flat.view(flat_grad, i) for i in range(len(self.params))]
        else:
            grads = [p.grad for p in self.params]
        for i, (p, g, state) in enumerate(zip(self.params, grads, self.state)):
            if g is not None:
                self._update(i, p, g, state)

    def _check_flat_grad(self, flat_grad):
        if self.flat is None:
            raise ValueError("step(flat_grad): the parameters do not share one dtype and device (no flat buffer)")
        if tuple(flat_grad.shape) != (self.flat.size,):
            raise ValueError(f"step(flat_grad): expected shape ({self.flat.size},), got {tuple(flat_grad.shape)}")

    def _adopt(self):
        """Restore the flat buffer's invariant after a rebinding of some ``.data`` (see FlatParameters.adopt)."""
        if self.flat is not None and self.flat.adopt():
            self._flat_rebuilt()

    def _flat_rebuilt(self):
        """Hook: the flat buffer was rebuilt (maybe on another device or dtype); flat state must follow."""

    def _update(self, i, p, g, state):
        """Update parameter ``i`` (``p``) in place from its gradient ``g``; ``state`` is its state dict."""
        raise NotImplementedError

    def _check_hyperparameters(self):
        """Raise ValueError for an invalid hyperparameter value (subclasses check theirs)."""

    # ------------------------------------------------------------------ state dict
    def state_dict(self):
        """A flat dict: hyperparameters, then ``"state.{i}.{name}"`` for each parameter stepped so far.

        Arrays are copies on the parameters' device; scalars are Python ``float``/``int``/``bool``.
        """
        out = {name: getattr(self, name) for name in self.HYPERPARAMETERS}
        for i, state in enumerate(self.state):
            for name, value in state.items():
                out[f"state.{i}.{name}"] = value.copy() if name in self.STATE_ARRAYS else value
        return out

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state from a dict made by :meth:`state_dict`.

        Values may be Python scalars, NumPy arrays (e.g. read back with ``np.load``) or CuPy
        arrays; each state array is copied to its parameter's device and dtype. Everything is
        checked before anything is changed: a missing or unknown key raises KeyError, a state
        array of the wrong shape or an invalid hyperparameter raises ValueError. Parameters
        with no entry in ``state_dict`` start afresh, as if never stepped.
        """
        missing = [name for name in self.HYPERPARAMETERS if name not in state_dict]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}")
        self._adopt()  # state arrays go to the parameters' current device and dtype
        per_param = [{} for _ in self.params]
        for key, value in state_dict.items():
            if key in self.HYPERPARAMETERS:
                continue
            index, name = _parse_state_key(key, len(self.params), self.STATE_SCALARS, self.STATE_ARRAYS)
            if index is None:
                raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected key {key!r}")
            per_param[index][name] = value

        new_state = []
        for i, (p, entries) in enumerate(zip(self.params, per_param)):
            new_state.append(self._converted_state(i, p, entries))

        old_hyperparameters = {name: getattr(self, name) for name in self.HYPERPARAMETERS}
        try:
            for name, cast in self.HYPERPARAMETERS.items():
                setattr(self, name, cast(_host_scalar(state_dict[name])))
            self._check_hyperparameters()
        except ValueError:
            for name, value in old_hyperparameters.items():
                setattr(self, name, value)
            raise
        self.state = new_state
        self._state_loaded()

    def _state_loaded(self):
        """Hook: ``state`` was just replaced by :meth:`load_state_dict` (fresh arrays)."""

    def _converted_state(self, i, p, entries):
        """Parameter ``i``'s state from its state-dict entries: scalars cast, arrays copied onto ``p``'s device/dtype."""
        if not entries:
            return {}
        expected = set(self.STATE_SCALARS) | set(self.STATE_ARRAYS)
        if set(entries) != expected:
            missing = sorted(f"state.{i}.{name}" for name in expected - set(entries))
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}")
        state = {}
        for name, cast in self.STATE_SCALARS.items():
            state[name] = cast(_host_scalar(entries[name]))
        for name in self.STATE_ARRAYS:
            value = entries[name]
            if tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: state.{i}.{name} has shape "
                    f"{tuple(value.shape)}, expected {tuple(p.data.shape)}"
                )
            state[name] = backend.to_device(value, backend.device_of(p.data), p.data.dtype).copy()
        return state

    def __repr__(self):
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.HYPERPARAMETERS)
        return f"{type(self).__name__}({settings}, params={len(self.params)})"


def _parse_state_key(key, num_params, scalar_names, array_names):
    """``(i, name)`` for a key ``"state.{i}.{name}"`` naming known state of an existing parameter, else ``(None, None)``."""
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
        return None, None
    index, name = int(parts[1]), parts[2]
    if index >= num_params or (name not in scalar_names and name not in array_names):
        return None, None
    return index, name


def _host_scalar(value):
    """A Python scalar from a Python scalar or a 0-d NumPy/CuPy array (an explicit host transfer)."""
    return backend.to_numpy(value).item()


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1) exactly as ``torch.optim.Adam`` with ``amsgrad=False``.

    Args:
        params: iterable of :class:`Parameter` (e.g. ``model.parameters()``).
        lr: step size alpha.
        betas: (beta1, beta2), decay rates of the first and second moment estimates, in [0, 1).
            SN-GAN (Miyato et al. 2018) uses e.g. lr=2e-4, betas=(0.0, 0.9) or (0.5, 0.999).
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty coefficient, added to the gradient (PyTorch's Adam, not AdamW).

    For each parameter p with gradient g, at its own step t = 1, 2, ...:

    .. math::
        g &\\leftarrow g + \\lambda p \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g \\\\
        v_t &= \\beta_2 v_{t-1} + (1 - \\beta_2) g^2 \\\\
        p &\\leftarrow p - \\frac{\\alpha}{1 - \\beta_1^t} \\cdot
            \\frac{m_t}{\\sqrt{v_t} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    with m_0 = v_0 = 0. Dividing by the bias corrections 1 - beta^t undoes the pull of the
    zero initialization towards 0; eps is added *after* the bias correction of sqrt(v_t), as
    PyTorch does (Kingma & Ba add it to sqrt(v_hat) too: the same thing).
    """

    HYPERPARAMETERS = {"lr": float, "beta1": float, "beta2": float, "eps": float, "weight_decay": float}
    STATE_SCALARS = {"step": int}
    STATE_ARRAYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self._check_hyperparameters()

    @property
    def betas(self):
        """``(beta1, beta2)``."""
        return (self.beta1, self.beta2)

    def _check_hyperparameters(self):
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"invalid {name} {value}: must be in [0, 1)")
        if not self.eps >= 0.0:
            raise ValueError(f"invalid eps {self.eps}: must be >= 0")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {self.weight_decay}: must be >= 0")

    def _update(self, i, p, g, state):
        """One step of parameter ``i`` alone (parameters without a gradient, or at different step counts)."""
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = self._fresh_moments(i, p)
        state["step"] += 1
        self._apply(p.data, g, state["exp_avg"], state["exp_avg_sq"], state["step"])

    def _apply(self, p, g, m, v, t):
        """p, m, v <- p_t, m_t, v_t in place, for gradient g at step t (one parameter, or all of them flat)."""
        # g = grad + lambda p   (a new array: the gradient itself is never modified)
        g = g if self.weight_decay == 0 else g + self.weight_decay * p
        step_size = self.lr / (1 - self.beta1**t)
        sqrt_bias_correction2 = math.sqrt(1 - self.beta2**t)
        # p, m, v <- p_t, m_t, v_t, in place
        _adam_step(p, g, m, v, self.beta1, 1 - self.beta1, self.beta2, 1 - self.beta2, self.eps, step_size,
                   sqrt_bias_correction2, out=(p, m, v))

    # ------------------------------------------------------------------ the flat moments
    # Invariant between calls, with a flat buffer: ``moments`` is None (no step yet) or the pair of flat
    # arrays (m, v) laid out as ``flat.data`` (same device and dtype); a parameter with state holds the
    # views of its slices as "exp_avg", "exp_avg_sq", and the slices of a parameter without state are 0.
    moments = None

    def step(self, flat_grad=None):
        """Update every parameter that has a gradient (see :meth:`Optimizer.step`).

        With the flat buffer, when every parameter steps (all ``.grad`` set, or ``flat_grad`` given)
        from the same step count, this is one elementwise kernel over all of them; otherwise each
        parameter steps alone, on the same arrays with the same arithmetic.
        """
        self._adopt()
        steps = {state.get("step", 0) for state in self.state}
        every = flat_grad is not None or all(p.grad is not None for p in self.params)
        if self.flat is None or not every or len(steps) != 1:
            return super().step(flat_grad)
        if flat_grad is not None:
            self._check_flat_grad(flat_grad)
        g = self.flat.gather_grads() if flat_grad is None else flat_grad
        m, v = self._flat_moments()
        t = steps.pop() + 1
        for i, state in enumerate(self.state):
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = self.flat.view(m, i), self.flat.view(v, i)
            state["step"] = t
        self._apply(self.flat.data, g, m, v, t)

    def _flat_moments(self):
        """The flat (m, v), made (zeros) at the first use."""
        if self.moments is None:
            xp = get_array_module(self.flat.data)
            self.moments = (xp.zeros_like(self.flat.data), xp.zeros_like(self.flat.data))
        return self.moments

    def _fresh_moments(self, i, p):
        """Zero (m, v) for parameter ``i``'s first step: views of the flat moments, or new arrays."""
        if self.flat is None:
            xp = get_array_module(p.data)
            return xp.zeros_like(p.data), xp.zeros_like(p.data)
        m, v = self._flat_moments()
        return self.flat.view(m, i), self.flat.view(v, i)

    def _flat_rebuilt(self):
        # the parameters may have moved or changed dtype: the moments follow, and the views are re-made
        if self.moments is not None:
            data = self.flat.data
            self.moments = tuple(backend.to_device(a, backend.device_of(data), data.dtype) for a in self.moments)
            self._point_state_at_moments(keep=False)

    def _state_loaded(self):
        # fresh state arrays from a state dict: copied into zeroed flat moments, the state then holding views
        if self.flat is not None:
            self.moments = None
            if any(self.state):
                self._flat_moments()
                self._point_state_at_moments(keep=True)

    def _point_state_at_moments(self, keep):
        """Make each stepped parameter's "exp_avg"/"exp_avg_sq" views of the flat moments (``keep``: copy its values in first)."""
        for i, state in enumerate(self.state):
            if state:
                for name, flat in zip(self.STATE_ARRAYS, self.moments):
                    view = self.flat.view(flat, i)
                    if keep:
                        view[...] = state[name]
                    state[name] = view


@elementwise
def _adam_step(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, sqrt_bias_correction2):
    r"""One Adam step of a parameter p with gradient g: returns (p_t, m_t, v_t).

    The scalars are Python floats, computed on the host (1 - beta1 and 1 - beta2 included: see
    :func:`npsn.backend.elementwise` on arithmetic between scalar arguments), rounded to p's
    dtype where they meet an array: step_size = lr / (1 - beta1^t) and
    sqrt_bias_correction2 = sqrt(1 - beta2^t). Each operation rounds as written, e.g.
    (1 - beta2) (g g), not ((1 - beta2) g) g.
    """
    xp = get_array_module(p)
    # m_t = beta1 m_{t-1} + (1 - beta1) g
    m = beta1 * m + one_minus_beta1 * g
    # v_t = beta2 v_{t-1} + (1 - beta2) g^2
    v = beta2 * v + one_minus_beta2 * (g * g)
    # denom = sqrt(v_t) / sqrt(1 - beta2^t) + eps
    denom = xp.sqrt(v) / sqrt_bias_correction2 + eps
    # p_t = p - (lr / (1 - beta1^t)) m_t / denom
    p = p - step_size * (m / denom)
    return p, m, v


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    Args:
        params: iterable of :class:`Parameter`.
        lr: learning rate.
        momentum: momentum factor mu (0 disables the momentum buffer).
        dampening: dampening tau of the gradient added to the buffer.
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening = 0).
        weight_decay: L2 penalty coefficient lambda, added to the gradient.

    For each parameter p with gradient g:

    .. math::
        g &\\leftarrow g + \\lambda p \\\\
        b_1 &= g, \\qquad b_t = \\mu b_{t-1} + (1 - \\tau) g \\quad (t > 1) \\\\
        g &\\leftarrow g + \\mu b_t \\ \\text{(Nesterov)} \\quad\\text{or}\\quad g \\leftarrow b_t \\\\
        p &\\leftarrow p - \\text{lr} \\cdot g

    (the momentum steps only when momentum > 0). As in PyTorch the first buffer is the
    gradient itself, undampened, and lr multiplies the buffer (Sutskever et al. 2013 fold it
    into the buffer instead; the two agree while lr is constant).
    """

    HYPERPARAMETERS = {"lr": float, "momentum": float, "dampening": float, "nesterov": bool, "weight_decay": float}
    STATE_ARRAYS = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self._check_hyperparameters()

    def _check_hyperparameters(self):
        if not self.momentum >= 0.0:
            raise ValueError(f"invalid momentum {self.momentum}: must be >= 0")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {self.weight_decay}: must be >= 0")
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")

    def _update(self, i, p, g, state):
        # g = grad + lambda * p   (a new array: p.grad itself is never modified)
        g = g if self.weight_decay == 0 else g + self.weight_decay * p.data
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # b_1 = g   (a copy, so the buffer never aliases p.grad)
                buf = state["momentum_buffer"] = g.copy()
            else:
                # b_t = mu * b_{t-1} + (1 - tau) * g
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            # Nesterov: g = g + mu * b_t ; classical: g = b_t
            g = g + self.momentum * buf if self.nesterov else buf
        # p <- p - lr * g
        p.data -= self.lr * g
