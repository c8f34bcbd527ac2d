"""Worker for tests/test_distributed.py: run as ``mpiexec -n R python tests/distributed_worker.py MODE OUT ...``.

Modes (each rank runs the same code; rank 0 writes ``OUT``, an .npz of results):

* ``train MODEL UNTIL OUT_DIR [resume]``: float64 training of a small model (``cnn``, ``resnet``,
  ``cnn-conditional``: the cnn class-conditional on 10 classes, or ``cnn-wgan-gp``: the plain cnn D with the
  gradient penalty, whose epsilons are drawn globally and sliced) with the DistributedTrainer (run
  without mpiexec: the plain Trainer, one process), to iteration UNTIL,
  writing OUT_DIR/checkpoint.npz (rank 0); ``resume`` continues from that checkpoint first.
* ``layers OUT``: SyncBatchNorm2d on this rank's slice of a fixed global batch (forward, backward,
  and central differences of L = sum_r <G_r, y_r>), gathered on rank 0; and one MultiNodeOptimizer
  step over parameters of two dtypes, counting the allreduces.
* ``fail``: rank 1 raises at its second iteration (the run must stop on every rank).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

TINY = {"cnn": dict(g_ch=16, d_ch=8, n_dis=1), "resnet": dict(g_ch=8, d_ch=8, n_dis=2),
        "cnn-conditional": dict(g_ch=16, d_ch=8, n_dis=1, num_classes=10),
        "cnn-wgan-gp": dict(g_ch=16, d_ch=8, n_dis=2, d_norm="none", loss="wgan-gp")}


def images(n=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def labels(n=40, seed=0):
    """The classes of :func:`images` for a conditional run: int (n,) in 0..9."""
    return np.random.default_rng([seed, 1]).integers(0, 10, n)


def config(model):
    from npsn.gan.trainer import preset_config

    return preset_config(model.split("-")[0], batch_size=8, iterations=100, log_every=1,
                         sample_every=0, checkpoint_every=0, checkpoint_minutes=0, **TINY[model])


def make_trainer(model, out_dir, comm=None):
    """A float64 trainer (plain without ``comm``), not yet resumed."""
    from npsn.distributed.trainer import DistributedTrainer
    from npsn.gan.trainer import Trainer

    c = config(model)
    y = labels() if c.num_classes else None
    trainer = (Trainer(c, images(), out_dir, labels=y) if comm is None
               else DistributedTrainer(c, images(), out_dir, comm, labels=y))
    trainer.G.to(dtype=np.float64)
    trainer.D.to(dtype=np.float64)
    return trainer


def train(model, until, out_dir, resume=False, comm=None):
    """Train to iteration ``until`` (continuing ``out_dir``'s checkpoint when ``resume``); returns the trainer."""
    trainer = make_trainer(model, out_dir, comm)
    if resume:
        trainer.load(trainer.checkpoint_path)
    trainer.run(until=until, progress=False)
    return trainer


def layers(comm, out):
    from npsn.distributed.optimizer import MultiNodeOptimizer
    from npsn.nn import BatchNorm2d, Parameter
    from npsn.nn.sync_batchnorm import SyncBatchNorm2d
    from npsn.optim import SGD

    R, r = comm.size, comm.rank
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * R, 3, 3, 5)) * 2 + 1  # the global batch (channels last), mean far from 0
    g = rng.standard_normal(x.shape)  # dL/dy of L = sum <G, y>
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    rows = slice(4 * r, 4 * (r + 1))

    def sync_layer():
        bn = SyncBatchNorm2d(5, comm).to(dtype=np.float64)
        bn.weight.data[...], bn.bias.data[...] = gamma, beta
        return bn

    bn = sync_layer()
    y = bn(x[rows])
    dx = bn.backward(g[rows])
    grads = np.concatenate([bn.weight.grad, bn.bias.grad])
    comm.allreduce(grads, "sum")
    stats = np.concatenate([bn.running_mean, bn.running_var])

    # central differences of L = sum_r <G_r, y_r> at a few elements of the global batch (every rank evaluates)
    h, numerical = 1e-6, []
    probes = [(0, 0, 0, 0), (4 * R - 1, 2, 1, 4), (4 * R // 2, 1, 2, 3)]
    for probe in probes:
        values = []
        for sign in (1, -1):
            xs = x.copy()
            xs[probe] += sign * h
            layer = sync_layer()
            total = np.array([np.sum(g[rows] * layer(xs[rows]))])
            values.append(comm.allreduce(total, "sum")[0])
        numerical.append((values[0] - values[1]) / (2 * h))

    # one step of the multi-node optimizer: parameters of two dtypes, gradients that differ by rank
    calls = []
    real_allreduce = comm.allreduce
    comm.allreduce = lambda buffer, op="sum": calls.append((buffer.dtype.str, buffer.size, op)) or real_allreduce(
        buffer, op)
    params = [Parameter(np.zeros((2, 3))), Parameter(np.zeros(4)), Parameter(np.zeros(3, np.float32))]
    for i, p in enumerate(params):
        p.grad = np.arange(p.data.size, dtype=p.data.dtype).reshape(p.data.shape) * (r + 1) + i
    MultiNodeOptimizer(SGD(params, lr=1.0), comm).step()
    comm.allreduce = real_allreduce

    gathered = comm.allgather_obj((y, dx))
    if r == 0:
        reference = BatchNorm2d(5).to(dtype=np.float64)
        reference.weight.data[...], reference.bias.data[...] = gamma, beta
        y_ref = reference(x)
        dx_ref = reference.backward(g)
        np.savez(out, y=np.concatenate([a for a, _ in gathered]), dx=np.concatenate([b for _, b in gathered]),
                 y_ref=y_ref, dx_ref=dx_ref, grads=grads,
                 grads_ref=np.concatenate([reference.weight.grad, reference.bias.grad]), stats=stats,
                 stats_ref=np.concatenate([reference.running_mean, reference.running_var]),
                 numerical=np.array(numerical), analytic=np.array([np.concatenate([b for _, b in gathered])[p]
                                                                   for p in probes]),
                 params=np.concatenate([p.data.ravel().astype(np.float64) for p in params]),
                 calls=np.array([f"{d}:{n}:{op}" for d, n, op in calls]), size=R)


def fail(comm, out_dir):
    from npsn.distributed.trainer import DistributedTrainer

    trainer = DistributedTrainer(config("cnn"), images(), out_dir, comm)
    real_batch = trainer.real_batch

    def failing_real_batch():
        if comm.rank == 1 and trainer.iteration == 1:
            raise RuntimeError("injected failure")
        return real_batch()

    trainer.real_batch = failing_real_batch
    trainer.run(until=50, progress=False)


def main(argv):
    from npsn.distributed import launch
    from npsn.backend import threads

    threads.set_num_threads(1)
    mode, args = argv[0], argv[1:]
    comm = launch.start() if launch.launcher_size() > 1 else None
    if mode == "train":
        train(args[0], int(args[1]), args[2], resume="resume" in args[3:], comm=comm)
    elif mode == "layers":
        layers(comm, args[0])
    elif mode == "fail":
        fail(comm, args[0])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
