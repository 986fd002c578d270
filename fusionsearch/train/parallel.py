"""Data parallelism: one candidate trained by the workers of a ``torch.distributed`` process group.

Ray Train starts the group (one worker per GPU, :mod:`trainables.data_parallel`); this module is
what the training loop does differently inside it, and nothing else in it knows about workers.
Every worker reads the same global batch in the same seeded order and with the same
augmentation draws, takes its contiguous share, and scales its mean loss so that the gradients
``DistributedDataParallel`` averages are those of the whole batch's mean loss (class weights
included). So a candidate trains the same on any number of workers at the same global batch,
up to floating-point summation order, provided its normalisation does not depend on the batch
split: ``--norm group`` does not; batch normalisation is synchronised across workers
(``SyncBatchNorm``), which torch supports on CUDA only, so batch norm on CPU workers is refused.
Every worker validates on the whole validation part (the same weights give the same losses, so
all agree on the best epoch and on when to stop, without a message); only worker 0 writes
checkpoints.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import distributed, nn

from fusionsearch.errors import UserError

# Buffers (batch-norm statistics) are not re-broadcast from worker 0 before every forward pass:
# synchronised batch norm keeps them equal. torch 2.13 renamed the switch and warns on the old name.
_NO_BUFFER_SYNC = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else "broadcast_buffers"
)


@dataclass(frozen=True)
class Shard:
    """This process's place among a candidate's workers: ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        """The initialised process group's rank and size; a single worker outside one."""
        if distributed.is_available() and distributed.is_initialized():
            return cls(distributed.get_rank(), distributed.get_world_size())
        return cls()

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def writes(self) -> bool:
        """Whether this worker writes checkpoints (worker 0)."""
        return self.rank == 0

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Batch norm synchronised across the workers (CUDA); refused on CPU workers, where torch
        cannot synchronise it. A single worker's model is returned as is."""
        if not self.parallel or not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        ):
            return model
        if device.type != "cuda":
            raise UserError(
                f"a candidate trained by {self.world} CPU workers cannot use batch normalisation: torch "
                "synchronises it across workers on CUDA only, and unsynchronised it would depend on how "
                "the batch is split; use --norm group, or one worker per candidate (--gpus-per-trial 1)"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` for the training steps: ``DistributedDataParallel`` across the workers."""
        if not self.parallel:
            return model
        ids = [device] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, **{_NO_BUFFER_SYNC: False})

    def split(
        self, images: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        """This worker's share of a global batch, and the factor its mean loss is scaled by.

        The factor is ``world`` times the share's part of the batch's total sample weight, so that
        the average of the workers' gradients is the gradient of the batch's (weighted) mean loss.
        A worker left without a sample (a last batch smaller than the workers) takes one sample at
        factor 0: it must still join the gradient all-reduce.
        """
        if not self.parallel:
            return images, labels, 1.0
        n = len(labels)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        if hi == lo:
            return images[:1], labels[:1], 0.0
        if class_weights is None:
            return images[lo:hi], labels[lo:hi], self.world * (hi - lo) / n
        weights = class_weights[labels]  # a tensor on the device: no wait for it here
        return images[lo:hi], labels[lo:hi], self.world * weights[lo:hi].sum() / weights.sum()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the workers (the workers' scaled losses: the global batch's)."""
        if not self.parallel:
            return values
        values = values.clone()
        distributed.all_reduce(values)
        return values / self.world
