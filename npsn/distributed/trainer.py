"""The data-parallel training loop: :class:`~npsn.gan.trainer.Trainer` over the ranks of a communicator.

Every rank holds the whole models and optimizers and draws the same *global* batches (the same
data order, the same z), then keeps its disjoint 1/R slice of each: rank r takes rows
[r B/R, (r+1) B/R) of the real batch (and of its labels) and of every z batch (and of G's labels, in
a class-conditional run). G's BatchNorm layers, conditional ones included, are synchronized
(:mod:`npsn.nn.sync_batchnorm`), so its batch statistics are those of the global batch, and the
optimizers average the gradients over ranks (:mod:`npsn.distributed.optimizer`). R ranks then
compute one process's update at the same global batch, up to the rounding of the sums. With
``sync_bn=False`` each rank normalizes with its own slice's statistics (PyTorch DDP without
SyncBatchNorm): cheaper, but the result then depends on R.

Rank 0 alone writes the log, the sample grids and the checkpoints; the checkpoint holds only
global state (the data stream and noise generators of the global batches), so a run resumes
with any number of ranks. A stop request (Ctrl-C, SIGTERM) on any rank travels with the
iteration's losses (one allreduce of three numbers): all ranks stop after the same iteration, and
rank 0 writes its checkpoint.
"""
import os
import time

import numpy as np

from npsn import backend
from npsn.distributed.comm import DistributedError
from npsn.distributed.optimizer import (broadcast_state, create_multi_node_optimizer, differing_ranks, host_state,
                                        state_digest)
from npsn.gan.checkpoint import flatten, unflatten
from npsn.gan.trainer import Trainer, TrainingDiverged
from npsn.gan.updates import check_finite
from npsn.nn.sync_batchnorm import convert_sync_batchnorm


class RanksStopped(KeyboardInterrupt):
    """Some rank asked to stop (Ctrl-C, SIGTERM); every rank raises it after the same iteration."""


class StopRequest:
    """A stop asked for by a signal, noticed at the end of the current iteration (a signal handler).

    ``signal.signal(signal.SIGINT, stop.handler)`` turns Ctrl-C into ``stop.requested = True``
    instead of a KeyboardInterrupt in the middle of a collective (where the other ranks would
    wait for this one forever).
    """

    def __init__(self):
        self.requested = False

    def handler(self, signum, frame):
        self.requested = True


def unsupported(config):
    """Why a run of ``config`` cannot be data-parallel, in one line, or None.

    A BatchNorm discriminator (``d_norm="bn"``) normalizes the real and the generated batch each with its own
    statistics (:func:`npsn.gan.updates.discriminator_update`); those are not synchronized over ranks.
    """
    if config.d_norm == "bn":
        return "argument --d-norm: bn (BatchNorm in D, per real and generated batch) is not offered with --distributed"
    return None


def local_slice(n, comm):
    """This rank's rows of a global batch of ``n``: ``slice(r n/R, (r+1) n/R)`` (``n`` divisible by R)."""
    if n % comm.size:
        raise ValueError(f"a global batch of {n} does not split over {comm.size} ranks")
    per_rank = n // comm.size
    return slice(comm.rank * per_rank, (comm.rank + 1) * per_rank)


class DistributedTrainer(Trainer):
    """A :class:`~npsn.gan.trainer.Trainer` for one rank of a data-parallel run.

    Invariant between iterations (from the first :meth:`run` on): every rank holds the same G and
    D (weights, SN's u and v, BN statistics), the same optimizer state, data stream and noise
    generators (G's labels' ``label_noise`` included), and the same ``iteration`` -- rank 0's,
    broadcast once and then kept by applying the same averaged update everywhere.

    Args:
        config, images, out_dir, resume, labels, class_names: as :class:`~npsn.gan.trainer.Trainer`
            (``batch_size`` and the G batch are global: each must be divisible by ``comm.size``).
        comm: the communicator of the run (:mod:`npsn.distributed.comm`).
        sync_bn: synchronize G's (conditional) BatchNorm (default; R ranks = one process); False keeps per-rank
            statistics.
        stop: a :class:`StopRequest` whose ``requested`` any rank may set.

    Construction communicates nothing (so every rank can validate first); the first :meth:`run`
    calls :meth:`synchronize`, which gives every rank rank 0's state.
    """

    def __init__(self, config, images, out_dir, comm, resume=False, sync_bn=True, stop=None, labels=None,
                 class_names=None):
        self.comm = comm
        for name, n in (("batch_size", config.batch_size), ("g_batch_size", config.g_batch_size or config.batch_size)):
            if n % comm.size:
                raise ValueError(f"{name} {n} is not divisible by the {comm.size} ranks")
        problem = unsupported(config)
        if problem:
            raise ValueError(problem)
        super().__init__(config, images, out_dir, resume=resume, labels=labels, class_names=class_names)
        if sync_bn:
            convert_sync_batchnorm(self.G, comm)
        self.opt_g = create_multi_node_optimizer(self.opt_g, comm)
        self.opt_d = create_multi_node_optimizer(self.opt_d, comm)
        self.stop = stop or StopRequest()
        self.is_root = comm.rank == 0
        self.synchronized = False
        self.stop_agreed = False  # every rank learnt, with the last iteration's losses, that some rank asked to stop

    # ------------------------------------------------------------------ state on every rank
    def state(self):
        """Everything a checkpoint holds, as ``{name: host array or value}`` (the broadcast and the digest)."""
        state = {}
        for prefix, part in (("G", self.G), ("D", self.D), ("opt_g", self.opt_g), ("opt_d", self.opt_d),
                             ("stream", self.stream)):
            state.update(flatten(prefix, part.state_dict()))
        state.update({"iteration": self.iteration, "noise": self.noise.bit_generator.state,
                      "pixel_noise": self.pixel_noise.bit_generator.state})
        if self.label_noise is not None:  # a conditional run: G's labels
            state["label_noise"] = self.label_noise.bit_generator.state
        state["penalty_noise"] = self.penalty_noise.bit_generator.state
        return state

    def load_state(self, state):
        """Restore :meth:`state`'s dict (as :meth:`~npsn.gan.trainer.Trainer.load` restores a checkpoint)."""
        self.G.load_state_dict(unflatten("G", state))
        self.D.load_state_dict(unflatten("D", state))
        self.opt_g.load_state_dict(unflatten("opt_g", state))
        self.opt_d.load_state_dict(unflatten("opt_d", state))
        self.stream.load_state_dict(unflatten("stream", state))
        self.noise.bit_generator.state = state["noise"]
        self.pixel_noise.bit_generator.state = state["pixel_noise"]
        if self.label_noise is not None:
            self.label_noise.bit_generator.state = state["label_noise"]
        self.penalty_noise.bit_generator.state = state["penalty_noise"]
        self.iteration = int(state["iteration"])

    def synchronize(self):
        """Give every rank rank 0's state, then check it once; returns the ranks whose state differed before.

        Every rank built the same models from the same seed (or loaded the same checkpoint), so
        the list is normally empty; the broadcast makes the start identical whatever happened
        (ChainerMN broadcasts too). Raises DistributedError if the states still differ afterwards.
        """
        before = differing_ranks(self.comm, state_digest(self.state()))
        state = broadcast_state(self.comm, host_state(self.state()) if self.is_root else None)
        if not self.is_root:
            self.load_state(state)
        after = differing_ranks(self.comm, state_digest(self.state()))
        if after:
            raise DistributedError(f"ranks {after} hold a different state from rank 0 after the broadcast")
        self.synchronized = True
        return before

    # ------------------------------------------------------------------ this rank's slice of each global batch
    def real_batch(self):
        """This rank's rows of the global real batch (drawn whole on every rank, so every stream advances alike)."""
        batch = super().real_batch()
        return batch[local_slice(len(batch), self.comm)]

    def real_labelled_batch(self):
        """This rank's rows of the global real batch of a conditional run and of its labels (drawn whole, as above)."""
        x, y = super().real_labelled_batch()
        rows = local_slice(len(x), self.comm)
        return x[rows], y[rows]

    def sample_y(self, n):
        """G's labels for this rank's ``n`` rows: its slice of a global draw of ``n R`` (as many as the global z).

        ``n`` is this rank's count, as :func:`~npsn.gan.updates.gan_iteration` asks for as many labels
        as its (this rank's) z rows; the global draw keeps ``label_noise`` as one process's.
        """
        y = super().sample_y(n * self.comm.size)
        return y[local_slice(len(y), self.comm)]

    def sample_z(self, n=None):
        """This rank's rows of a global batch of ``n`` z (default: the global D batch)."""
        z = super().sample_z(n)
        return z[local_slice(len(z), self.comm)]

    def sample_eps(self, n):
        """The gradient penalty's epsilon for this rank's ``n`` rows: its slice of a global draw of ``n R``."""
        eps = super().sample_eps(n * self.comm.size)
        return eps[local_slice(len(eps), self.comm)]

    def train_iteration(self):
        """One iteration on this rank's slices; returns the global (mean over ranks) losses as host floats.

        Raises:
            TrainingDiverged: on every rank at once, when a global loss is not finite.
            RanksStopped: on every rank at once, at the start of the iteration after one in which any rank's
                stop was requested (so the last completed iteration is logged and checkpointed as usual).
        """
        if self.stop_agreed:
            raise RanksStopped  # before any work: the checkpoint is then the last completed (and logged) iteration
        loss_d, loss_g = self.run_updates()
        # [loss_d, loss_g, stop] summed over ranks: R times the global losses, and how many ranks ask to stop
        xp = backend.get_array_module(loss_d)
        buffer = np.zeros(3)
        buffer[:2] = backend.to_numpy(xp.stack([loss_d, loss_g]))
        buffer[2] = float(self.stop.requested)
        self.comm.allreduce(buffer, "sum")
        # some rank asked to stop: all ranks stop at the start of the next iteration
        self.stop_agreed = bool(buffer[2] > 0)
        return check_finite(buffer[0] / self.comm.size, buffer[1] / self.comm.size, self.iteration)

    # ------------------------------------------------------------------ rank 0 writes
    def save(self):
        """Rank 0 writes the checkpoint; every rank checks its parameters (the same on all, so all raise together)."""
        if self.is_root:
            return super().save()
        if not self.parameters_finite():
            raise TrainingDiverged(f"non-finite parameter at iteration {self.iteration}")
        self.saved_iteration = self.iteration
        self._last_save = time.monotonic()

    def save_samples(self, name):
        if self.is_root:
            super().save_samples(name)

    def _truncate_log(self):
        if self.is_root:
            super()._truncate_log()

    def _open_log(self):
        return super()._open_log() if self.is_root else open(os.devnull, "w")

    def run(self, until=None, progress=True):
        """:meth:`~npsn.gan.trainer.Trainer.run` on every rank (the progress bar on rank 0's terminal only)."""
        if not self.synchronized:
            differed = self.synchronize()
            if differed and self.is_root:
                self.notice(f"note: ranks {differed} had built a different initial state; they now hold rank 0's")
        return super().run(until, progress=progress and self.is_root)
