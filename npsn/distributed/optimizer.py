"""Data-parallel updates: gradients averaged over ranks in one allreduce, and identical state on every rank.

:class:`MultiNodeOptimizer` (ChainerMN's ``create_multi_node_optimizer``) wraps an optimizer of
:mod:`npsn.optim`: its :meth:`~MultiNodeOptimizer.step` packs every gradient into one flat
buffer, averages it over the ranks with a single allreduce, unpacks it and then steps the wrapped
optimizer. :func:`broadcast_state` / :func:`state_digest` make and check rank 0's state on every
rank (weights, SN's u and v, BN statistics, optimizer moments).
"""
import hashlib

import numpy as np

from npsn import backend
from npsn.backend import get_array_module


class MultiNodeOptimizer:
    """An optimizer whose ``step()`` first replaces each gradient by its mean over ``comm``'s ranks.

    Args:
        optimizer: an :class:`npsn.optim.Optimizer` (Adam, SGD) over this rank's copy of the parameters.
        comm: a communicator of :mod:`npsn.distributed.comm`.

    Every other attribute (``lr``, ``params``, ``zero_grad``, ``state_dict``, ``load_state_dict``,
    ...) is the wrapped optimizer's, so a trainer uses the wrapper as it would the optimizer, and
    checkpoints are the same files.

    One allreduce per step: the gradients of the parameters that have one (the same ones on
    every rank, since every rank runs the same code) are copied into one contiguous buffer of
    their dtype, averaged in place ("mean": the sum over ranks divided by R), and each ``.grad``
    becomes a view of its slice. One call instead of one per parameter: each collective pays
    the network's latency once (microseconds), and a ring allreduce reaches full bandwidth only
    on long messages. The buffer is kept between steps while the parameters with a gradient stay
    the same. An optimizer with a flat parameter buffer (:mod:`npsn.nn.flat`: Adam and SGD over
    parameters of one dtype and device) gathers its gradients itself in its own layout
    (``flat_gradient()``, one ``concatenate``) and steps from the averaged buffer (``step(flat)``);
    :meth:`_gradient_buffer` packs them only for the others, or when some gradients are missing.

    Invariant: between steps the wrapped optimizer's parameters and state are identical on
    every rank (true after :func:`broadcast_state`, and kept because every rank applies the same
    update to the same averaged gradients).

    >>> import numpy as np, npsn
    >>> from npsn.distributed.comm import SingleProcess
    >>> p = npsn.Parameter(np.ones(3))
    >>> opt = MultiNodeOptimizer(npsn.optim.SGD([p], lr=0.5), SingleProcess())
    >>> p.grad = np.full(3, 2.0); opt.step(); p.data
    array([0., 0., 0.])
    """

    def __init__(self, optimizer, comm):
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "comm", comm)
        object.__setattr__(self, "_flat", None)  # (key of the packed layout, {dtype: flat buffer})

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        setattr(self.optimizer, name, value)  # lr (a trainer's schedule) and the like belong to the optimizer

    def step(self):
        """Average every gradient over the ranks (one allreduce per dtype, in practice one), then step."""
        with_grad = [p for p in self.optimizer.params if p.grad is not None]
        if getattr(self.optimizer, "flat", None) is not None and len(with_grad) == len(self.optimizer.params):
            # the optimizer's own flat layout (npsn.nn.flat): gather once, average, and step from the average
            flat = self.optimizer.flat_gradient()
            self.comm.allreduce(flat, "mean")
            self.optimizer.step(flat)
            return
        for dtype, params, flat in self._gradient_buffer(with_grad):
            self.comm.allreduce(flat, "mean")
            offset = 0
            for p in params:
                n = p.grad.size
                # the averaged gradient, a view of its slice of the flat buffer
                p.grad = flat[offset:offset + n].reshape(p.grad.shape)
                offset += n
        self.optimizer.step()

    def _gradient_buffer(self, params):
        """``[(dtype, params of that dtype, flat buffer holding their gradients)]``: the packing."""
        groups = {}
        for p in params:
            groups.setdefault(np.dtype(p.grad.dtype), []).append(p)
        key = tuple((id(p), p.grad.shape, p.grad.dtype.str) for p in params)
        if self._flat is None or self._flat[0] != key:
            buffers = {}
            for dtype, members in groups.items():
                xp = get_array_module(members[0].grad)
                buffers[dtype] = xp.empty(sum(p.grad.size for p in members), dtype=dtype)
            object.__setattr__(self, "_flat", (key, buffers))
        buffers = self._flat[1]
        out = []
        for dtype, members in groups.items():
            flat, offset = buffers[dtype], 0
            for p in members:
                n = p.grad.size
                # pack: flat[offset:offset+n] = grad (the grad may already be this view: then a no-op copy)
                flat[offset:offset + n] = p.grad.reshape(-1)
                offset += n
            out.append((dtype, members, flat))
        return out

    def __repr__(self):
        return f"MultiNodeOptimizer({self.optimizer!r}, ranks={self.comm.size})"


def create_multi_node_optimizer(optimizer, comm):
    """``optimizer`` wrapped for data-parallel training over ``comm`` (ChainerMN's name): see :class:`MultiNodeOptimizer`."""
    return MultiNodeOptimizer(optimizer, comm)


def broadcast_state(comm, state, root=0):
    """Rank ``root``'s ``state`` on every rank: a picklable object of host arrays and Python values.

    Used once at start-up (weights, SN vectors, BN statistics, optimizer moments, random states),
    through ``bcast_obj``: simple, and its cost (one message of the checkpoint's size) is paid once.
    """
    return comm.bcast_obj(state, root=root)


def host_state(state):
    """``{name: host array or Python value}`` of a state dict whose arrays may live on the GPU."""
    return {k: backend.to_numpy(v) if hasattr(v, "shape") else v for k, v in state.items()}


def state_digest(state):
    """A SHA-256 of a ``{name: array or value}`` dict: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if hasattr(value, "shape"):
            array = np.ascontiguousarray(backend.to_numpy(value))
            h.update(f"{name}:{array.dtype.str}:{array.shape}:".encode())
            h.update(array.tobytes())
        else:
            h.update(f"{name}={value!r};".encode())
    return h.hexdigest()


def differing_ranks(comm, digest):
    """The ranks whose ``digest`` differs from rank 0's (every rank gets the same list)."""
    digests = comm.allgather_obj(digest)
    return [r for r, d in enumerate(digests) if d != digests[0]]
