"""Data-parallel fine-tuning over the processes ``accelerate launch`` (or ``torchrun``) starts, one per device.

Every process holds the whole frozen base and the same trainable weights. Each step, every process draws the whole
global batch from the step's generator (the same numbers on all of them: images, posterior noise, timesteps,
noise), keeps its own rows of it (``rows``), and runs forward and backward on those only. The gradients are then
averaged across processes (``average_gradients``) before clipping and AdamW, so every process takes the same step:
the one a single process takes on the whole batch, up to the order of float additions. The global batch is the
configured ``batch_size`` whatever the process count, so a run, its checkpoints and ``--resume`` do not depend on
how many processes trained it. Logging, validation images and files are the main process's job.

Why a gradient all-reduce after backward instead of wrapping the networks in DistributedDataParallel
(``accelerator.prepare(model)``, as diffusers' example scripts do): the trained networks are called from inside
diffusers' own pipeline code (``encode_prompt`` for a text-encoder LoRA, the validation pipelines), a prior-
preservation step runs the U-Net twice before one backward, and the single-process path must stay exactly what it
was. DDP computes the same mean; it overlaps the all-reduce with backward, which matters for a ControlNet's
hundreds of MB of gradients and little for a LoRA's few MB.

A run started without a launcher (no ``WORLD_SIZE`` > 1) is ``SINGLE``: accelerate is not even imported, and
every method here is the identity, so it trains exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

# Gradients travel in flat buckets of about this size, as DistributedDataParallel's default bucket_cap_mb: one
# collective per bucket instead of one per weight (hundreds of small LoRA matrices), without a second copy of a
# ControlNet's whole gradient.
BUCKET_BYTES = 25 * 2**20


def launched_processes() -> int:
    """How many processes the launcher started: torchrun (which ``accelerate launch`` runs for several
    processes) sets WORLD_SIZE in each."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process logs and writes: rank 0, or a run without a launcher."""
    return int(os.environ.get("RANK", "0")) == 0


def main_process_only(progress):
    """A rich Progress bar that only the main process draws (the others would draw a second bar that never
    moves: they yield no events)."""
    progress.disable = not is_main_process()
    return progress


@dataclass
class DataParallel:
    """This process's place in a data-parallel run; ``SINGLE`` (one process) makes every method the identity."""

    rank: int = 0
    world_size: int = 1
    device: Optional[str] = None  # the launcher's device for this process (cuda:<local rank>, cpu); None: caller's
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch of ``batch_size`` (a multiple of world_size, checked at set-up)."""
        if self.world_size == 1:
            return slice(None)
        local = batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

    @torch.no_grad()
    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes, in place. Parameters without a gradient are
        skipped; every process runs the same graph, so they are the same ones everywhere (as DDP assumes)."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        bucket: list[torch.Tensor] = []
        size = 0
        for grad in grads:
            if bucket and (size + grad.numel() * grad.element_size() > BUCKET_BYTES
                           or grad.dtype != bucket[0].dtype or grad.device != bucket[0].device):
                self._average_bucket(bucket)
                bucket, size = [], 0
            bucket.append(grad)
            size += grad.numel() * grad.element_size()
        if bucket:
            self._average_bucket(bucket)

    def _average_bucket(self, grads: list[torch.Tensor]) -> None:
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        for grad, averaged in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(averaged.view_as(grad))

    @torch.no_grad()
    def broadcast_parameters(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """The main process's weights on every process (DDP does this at start): same seeds give the same initial
        weights already, this keeps it true wherever a device's initialisation is not deterministic."""
        if self.world_size == 1:
            return
        from accelerate.utils import broadcast

        for p in parameters:
            p.copy_(broadcast(p.detach().clone(), from_process=0))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-process value (each process's loss on its rows: their mean is the global batch's)."""
        if self.world_size == 1:
            return value
        return self.accelerator.reduce(value.detach(), reduction="mean")

    def finish(self) -> None:
        """Wait for every process (the main one may still be writing files), then leave the process group."""
        if self.world_size == 1:
            return
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


SINGLE = DataParallel()


def data_parallel(batch_size: int, mixed_precision: str = "no") -> DataParallel:
    """``SINGLE`` without a launcher; under ``accelerate launch``/``torchrun``, this process's place in the
    process group (started here, through accelerate). Bad settings raise ValueError before anything starts:
    a global ``batch_size`` that does not split evenly, or accelerate's own ``--mixed_precision`` set to something
    difflab's ``mixed_precision`` does not do (difflab's autocast is the one that runs)."""
    world_size = launched_processes()
    if world_size == 1:
        return SINGLE
    if batch_size % world_size:
        raise ValueError(f"batch_size: --batch-size {batch_size} is the global batch and must split evenly across "
                         f"the {world_size} processes (each trains on batch_size / {world_size} images); "
                         f"use a multiple of {world_size}")
    launched_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched_precision not in ("no", mixed_precision):
        raise ValueError(f"mixed_precision: accelerate launch --mixed_precision {launched_precision} is not applied; "
                         f"difflab's own option sets it (this run: {mixed_precision!r}); pass it to the difflab "
                         "command instead")
    from accelerate import Accelerator

    from difflab.engine.device import choose_placement

    # Without cpu=True, accelerate on a machine without a GPU treats each torchrun process as a lone one
    cpu = choose_placement().device == "cpu"
    accelerator = Accelerator(cpu=cpu)
    if accelerator.num_processes != world_size:
        raise RuntimeError(f"accelerate set up {accelerator.num_processes} processes, the launcher {world_size}")
    device = "cpu" if cpu else str(accelerator.device)
    return DataParallel(accelerator.process_index, world_size, device, accelerator)
