"""Run by test_distributed.py, alone or under torchrun. Every process saves its weights and, per
step, (T evaluations, the largest per-sample iteration count among its own samples).

``mnist``: one pass of ``train_one_epoch`` over a small MNIST subset (a run set up by ``setup_run``).
``lockstep``: an ImplicitLayer whose operator normalises over the batch; process 0's samples
contract 16x faster than process 1's, so each process alone would stop at a different iteration.
``nccl``: (one GPU, ``torchrun --nproc-per-node 1``) the nccl backend, SyncBatchNorm and DDP around
the MNIST model, a few training steps; saves the losses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from training import config_of

from jfb import ImplicitLayer
from jfb.train import setup_run, train_one_epoch
from jfb.train.distributed import start_processes, stop_processes, synchronize_batch_norm


def train_mnist(out: Path, options: dict) -> None:
    dropout = options.pop("dropout", None)
    config = config_of(**options)
    processes = start_processes(config.device)
    run = setup_run(config, out / f"run{processes.rank}", processes=processes, progress=False, log=lambda m: None)
    if dropout is not None:  # dropout masks differ between 1 and 2 processes
        for module in run.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
    solves: list[list[int]] = []
    run.model.implicit.register_forward_hook(
        lambda layer, args, output: solves.append(
            [layer.last_stats.forward.t_evals, int(layer.last_stats.iterations.max())]
        )
    )
    train_one_epoch(run)
    torch.save({"model": run.model.state_dict(), "solves": solves}, out / f"rank{processes.rank}.pt")
    # DDP's reducer holds the process group: freed after destroy_process_group, its gloo destructor joins a
    # worker thread that waits for the GIL this thread holds (a deadlock at exit seen ~1 in 10 runs)
    del run
    stop_processes(processes)


class BatchNormalisedOperator(nn.Module):
    """T(u; base, rate) = base + rate * tanh(W BN(u)), W orthogonal: contraction ~ rate."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(features, affine=False)
        self.mix = nn.Linear(features, features, bias=False)
        nn.init.orthogonal_(self.mix.weight)

    def forward(self, u: torch.Tensor, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        base, rate = x
        return base + rate * torch.tanh(self.mix(self.norm(u)))


def train_lockstep(out: Path, options: dict) -> None:
    processes = start_processes("cpu")
    torch.manual_seed(0)
    layer = ImplicitLayer(
        BatchNormalisedOperator(8), solver="picard", tol=1e-5, max_iter=300, lockstep=options.get("lockstep")
    )
    if processes.distributed:
        layer = synchronize_batch_norm(layer, "cpu")
    engine = processes.wrap(layer, "cpu")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.01)
    solves = []
    generator = torch.Generator().manual_seed(1 + processes.rank)
    for _ in range(options.get("steps", 3)):
        base = torch.randn(32, 8, generator=generator)
        rate = torch.full((32, 1), 0.05 if processes.rank == 0 else 0.8)
        loss = engine((base, rate), torch.zeros_like(base)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        solves.append([layer.last_stats.forward.t_evals, int(layer.last_stats.iterations.max())])
    torch.save({"model": layer.state_dict(), "solves": solves}, out / f"rank{processes.rank}.pt")
    # DDP's reducer holds the process group: freed after destroy_process_group, its gloo destructor joins a
    # worker thread that waits for the GIL this thread holds (a deadlock at exit seen ~1 in 10 runs)
    del engine
    stop_processes(processes)


def train_nccl(out: Path, options: dict) -> None:
    import torch.distributed as dist

    config = config_of(
        device="cuda",
        limit_train=options.get("samples", 512),
        batch_size=128,
        solver="picard",
        tol=None,
        max_iter=8,
        channels_last=True,
    )
    dist.init_process_group("nccl")  # a group of one: exercises the backend, SyncBatchNorm and DDP on one GPU
    torch.cuda.set_device(0)
    run = setup_run(config, out / "run", progress=False, log=lambda m: None)
    run.model = synchronize_batch_norm(run.model, "cuda")  # BatchNorm parameters carry over to the sync copies
    run.engine = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=[0])
    initial = [p.detach().clone() for p in run.model.parameters()]
    stats = train_one_epoch(run)
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(run.model.parameters(), initial))
    torch.save(
        {
            "steps": stats.batches,
            "moved": moved,
            "accuracy": 100.0 * stats.correct / stats.samples,
            "sync_norms": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in run.model.modules()),
        },
        out / "rank0.pt",
    )
    del run
    dist.destroy_process_group()


if __name__ == "__main__":
    {"mnist": train_mnist, "lockstep": train_lockstep, "nccl": train_nccl}[sys.argv[1]](
        Path(sys.argv[2]), json.loads(sys.argv[3])
    )
