"""SyncBatchNorm in one process (no MPI): BatchNorm's math, the conversion, checkpoints, and PyTorch's SyncBatchNorm.

Two ranks against BatchNorm on the concatenated batch are in tests/test_distributed.py.
"""
import numpy as np
import pytest

from npsn.distributed.comm import SingleProcess
from npsn.distributed.optimizer import MultiNodeOptimizer
from npsn.gan.models import build_gan
from npsn.nn import BatchNorm1d, BatchNorm2d
from npsn.nn.conditional_batchnorm import CategoricalConditionalBatchNorm1d, CategoricalConditionalBatchNorm2d
from npsn.nn.sync_batchnorm import (SyncBatchNorm1d, SyncBatchNorm2d, SyncCategoricalConditionalBatchNorm1d,
                                    SyncCategoricalConditionalBatchNorm2d, convert_sync_batchnorm)
from npsn.optim import Adam


def _pair(cls, sync_cls, c, rng):
    plain, sync = cls(c).to(dtype=np.float64), sync_cls(c, SingleProcess()).to(dtype=np.float64)
    for bn in (plain, sync):
        bn.weight.data[...] = np.linspace(0.5, 1.5, c)
        bn.bias.data[...] = np.linspace(-1, 1, c)
    return plain, sync


@pytest.mark.parametrize("cls, sync_cls, shape", [(BatchNorm1d, SyncBatchNorm1d, (6, 4)),
                                                  (BatchNorm2d, SyncBatchNorm2d, (3, 4, 5, 4))])
def test_one_rank_is_batchnorm(cls, sync_cls, shape):
    rng = np.random.default_rng(0)
    plain, sync = _pair(cls, sync_cls, shape[-1], rng)
    for _ in range(2):  # training mode, twice (running statistics), then eval mode
        x, g = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
        np.testing.assert_allclose(sync(x), plain(x), rtol=0, atol=1e-13)
        np.testing.assert_allclose(sync.backward(g), plain.backward(g), rtol=0, atol=1e-13)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(sync, name), getattr(plain, name), rtol=0, atol=1e-14)
    assert sync.num_batches_tracked == plain.num_batches_tracked == 2
    np.testing.assert_allclose(sync.weight.grad, plain.weight.grad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.bias.grad, plain.bias.grad, rtol=0, atol=1e-12)
    plain.eval(), sync.eval()
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    np.testing.assert_array_equal(sync(x), plain(x))
    np.testing.assert_array_equal(sync.backward(g), plain.backward(g))


def test_conversion_keeps_parameters_buffers_and_checkpoint_names():
    G, _ = build_gan("resnet", g_ch=8, d_ch=8)
    params = list(G.parameters())
    before = {k: np.array(v) for k, v in G.state_dict().items()}
    opt = Adam(G.parameters())
    convert_sync_batchnorm(G, SingleProcess())
    kinds = {type(m).__name__ for m in G.modules()}
    assert "SyncBatchNorm2d" in kinds and "BatchNorm2d" not in kinds
    assert all(a is b for a, b in zip(G.parameters(), params)) and opt.params == params
    after = G.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)
    plain, _ = build_gan("resnet", g_ch=8, d_ch=8, seed=1)
    plain.load_state_dict(after)  # a converted G's checkpoint loads into a plain one, and back
    G.load_state_dict(plain.state_dict())


def test_converted_generator_trains_like_the_plain_one_in_one_process():
    z = np.random.default_rng(0).standard_normal((4, 128))
    results = []
    for convert in (False, True):
        G, _ = build_gan("cnn", g_ch=16, d_ch=8)
        G.to(dtype=np.float64)
        opt = Adam(G.parameters(), lr=1e-3)
        if convert:
            convert_sync_batchnorm(G, SingleProcess())
            opt = MultiNodeOptimizer(opt, SingleProcess())
        for _ in range(2):
            x = G(z)
            opt.zero_grad()
            G.backward(np.cos(x))
            opt.step()
        results.append(G.state_dict())
    for key in results[0]:
        np.testing.assert_allclose(results[1][key], results[0][key], rtol=0, atol=1e-12, err_msg=key)


def test_against_pytorch_sync_batchnorm_in_one_process():
    """torch.nn.SyncBatchNorm without a process group normalizes like BatchNorm (its one-process path)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((3, 4, 4, 5)) + 1, rng.standard_normal((3, 4, 4, 5))
    sync = SyncBatchNorm2d(5, SingleProcess()).to(dtype=np.float64)
    reference = torch.nn.SyncBatchNorm(5).double()
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = reference(xt)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    y, dx = sync(x), sync.backward(g)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.weight.grad, reference.weight.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.running_var, reference.running_var.numpy(), rtol=0, atol=1e-12)


def test_communicator_checks_buffers():
    comm = SingleProcess()
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce(np.zeros((4, 4))[:, ::2])
    with pytest.raises(ValueError, match="unknown reduction"):
        comm.allreduce(np.zeros(3), op="max")


def test_one_process_never_imports_mpi4py():
    import subprocess
    import sys

    code = ("import sys, npsn, npsn.distributed, npsn.distributed.trainer, npsn.nn.sync_batchnorm; "
            "print('mpi4py' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_distributed_without_mpi4py_is_one_line(monkeypatch):
    import sys

    from npsn.distributed.comm import DistributedError, import_mpi

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(DistributedError, match=r"needs mpi4py.*pip install mpi4py mpich"):
        import_mpi()


@pytest.mark.parametrize("cls, sync_cls, shape", [
    (CategoricalConditionalBatchNorm1d, SyncCategoricalConditionalBatchNorm1d, (6, 4)),
    (CategoricalConditionalBatchNorm2d, SyncCategoricalConditionalBatchNorm2d, (5, 3, 2, 4))])
def test_one_rank_is_conditional_batchnorm(cls, sync_cls, shape):
    """Forward, input and per-class gradients, running statistics and eval mode of the conditional BN."""
    rng = np.random.default_rng(1)
    k, c = 3, shape[-1]
    plain, sync = cls(c, k).to(dtype=np.float64), sync_cls(c, k, SingleProcess()).to(dtype=np.float64)
    gamma, beta = rng.standard_normal((k, c)) + 1, rng.standard_normal((k, c))
    for bn in (plain, sync):
        bn.weight.data[...], bn.bias.data[...] = gamma, beta
    for _ in range(2):  # training mode, twice (running statistics and accumulated gradients)
        x, g = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
        y = rng.integers(0, k - 1, shape[0])  # class k-1 absent: its gradient rows stay 0
        np.testing.assert_allclose(sync(x, y), plain(x, y), rtol=0, atol=1e-13)
        np.testing.assert_allclose(sync.backward(g), plain.backward(g), rtol=0, atol=1e-13)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(sync, name), getattr(plain, name), rtol=0, atol=1e-14)
    assert sync.num_batches_tracked == plain.num_batches_tracked == 2
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(sync, name).grad, getattr(plain, name).grad, rtol=0, atol=1e-12)
        assert np.any(getattr(plain, name).grad[:k - 1]) and not np.any(getattr(plain, name).grad[k - 1])
    plain.eval(), sync.eval()
    x, g, y = rng.standard_normal(shape), rng.standard_normal(shape), rng.integers(0, k, shape[0])
    np.testing.assert_array_equal(sync(x, y), plain(x, y))
    np.testing.assert_array_equal(sync.backward(g), plain.backward(g))


def test_conversion_of_a_conditional_generator_keeps_parameters_and_checkpoint_names():
    G, _ = build_gan("cnn", g_ch=16, d_ch=8, num_classes=10)
    params, keys = list(G.parameters()), list(G.state_dict())
    convert_sync_batchnorm(G, SingleProcess())
    kinds = {type(m).__name__ for m in G.modules()}
    assert "SyncCategoricalConditionalBatchNorm2d" in kinds and "CategoricalConditionalBatchNorm2d" not in kinds
    assert all(a is b for a, b in zip(G.parameters(), params)) and list(G.state_dict()) == keys
    plain, _ = build_gan("cnn", g_ch=16, d_ch=8, num_classes=10, seed=1)
    plain.load_state_dict(G.state_dict())  # checkpoints interchangeable
