"""Training a pixel-space diffusion model (Ho et al. 2020, alg. 1), as a generator of progress events.

    repeat: x_0 ~ data, t ~ U{0..T-1}, eps ~ N(0, I)
            loss = || target(x_0, t, eps) - net(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t, label) ||^2

with AdamW, a warm-up then cosine learning rate, gradient clipping, an exponential moving average (EMA) of the
weights (what sampling uses), and classifier-free guidance's label dropout: with probability ``label_dropout`` a
label is replaced by the null class, so one network learns both p(x | label) and p(x).

Every random draw of step k comes from generators seeded with (seed, k): a run resumed from a checkpoint at step
k continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from difflab.core import checkpoint as ckpt
from difflab.core.lr_schedule import DEFAULT_LR_SCHEDULER, lr_factor
from difflab.core.process import PREDICTIONS, Prediction, diffusion_loss, q_sample
from difflab.core.unet import UNet, UNetConfig
from difflab.data.digits import LabelledImages


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 1e-3  # small models on small data tolerate a high rate; cosine-decayed to 10 %
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm: guards against the rare huge-loss batch at small t
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # the classifier-free guidance paper's 10-20 %
    min_snr_gamma: float | None = None  # e.g. 5.0 (Hang et al. 2023); None = plain MSE
    prediction: Prediction = "epsilon"
    schedule: str = "linear"
    num_timesteps: int = 1000
    seed: int = 0
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1; got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1); got {self.label_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}; got {self.prediction!r}")


@dataclass(frozen=True)
class TrainEvent:
    step: int  # steps done so far
    total: int
    loss: float
    learning_rate: float
    seconds: float  # wall time spent training, resumed runs included
    checkpoint: Path | None = None  # set on the events where a checkpoint was written


@dataclass
class TrainState:
    model: UNet
    ema: UNet
    optimizer: torch.optim.Optimizer
    step: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Step ``step``'s rate: ``config.learning_rate`` times the factor of ``config.lr_scheduler`` (configs
    without that field train with the default, linear warm-up over ``warmup_steps`` then cosine to 10%)."""
    name = getattr(config, "lr_scheduler", DEFAULT_LR_SCHEDULER)
    return config.learning_rate * lr_factor(name, step, config.warmup_steps, config.steps)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, config) -> float:
    """Set step ``step``'s rate (``learning_rate_at``) on every group, times the group's ``lr_scale`` if it has
    one (a text encoder trained at its own rate); returns the unscaled rate."""
    learning_rate = learning_rate_at(step, config)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("lr_scale", 1.0)
    return learning_rate


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, step: int, config) -> float:
    """One AdamW step at step ``step``'s rate (``set_learning_rate``): gradients of ``loss`` clipped to a global
    norm of ``config.grad_clip`` over ``parameters``. Returns the (unscaled) rate used."""
    learning_rate = set_learning_rate(optimizer, step, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
    optimizer.step()
    return learning_rate


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Every random draw of step ``step`` comes from this generator, so a resumed run draws what the
    uninterrupted one would have."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def new_state(unet_config: UNetConfig, config: TrainConfig) -> TrainState:
    torch.manual_seed(config.seed)  # the initial weights
    model = UNet(unet_config)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return TrainState(model, ema, optimizer)


def train(
    data: LabelledImages,
    unet_config: UNetConfig,
    config: TrainConfig,
    out: str | Path,
    *,
    dataset_name: str = "",
    resume: bool = False,
) -> Iterator[TrainEvent]:
    """Train, yielding an event after every step; checkpoints into ``out`` every ``checkpoint_every`` steps."""
    out = Path(out)
    conditional = unet_config.num_classes is not None
    if conditional and unet_config.num_classes != data.num_classes:
        raise ValueError(f"num_classes {unet_config.num_classes} does not match the dataset's {data.num_classes} classes")
    schedule = ckpt.ScheduleSpec(config.schedule, config.num_timesteps).build()
    state = new_state(unet_config, config)
    if resume:
        load_training_state(out, state)
    started = time.perf_counter() - state.seconds

    while state.step < config.steps:
        # 1. Draw the batch, the timesteps, the noise and the dropped labels from this step's own generator
        generator = step_generator(config.seed, state.step)
        torch.manual_seed(config.seed * 1_000_003 + state.step)  # dropout inside the model
        index = torch.randint(0, len(data), (config.batch_size,), generator=generator)
        x_0, labels = data.images[index], data.labels[index]
        t = torch.randint(0, schedule.num_timesteps, (config.batch_size,), generator=generator)
        eps = torch.randn(x_0.shape, generator=generator)
        if conditional:
            dropped = torch.rand(config.batch_size, generator=generator) < config.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, unet_config.num_classes), labels)

        # 2. Loss on x_t and the optimizer step
        x_t = q_sample(schedule, x_0, t, eps)
        output = state.model(x_t, t.float(), labels if conditional else None)
        loss = diffusion_loss(schedule, config.prediction, output, x_0, t, eps, min_snr_gamma=config.min_snr_gamma)
        learning_rate = optimizer_step(state.optimizer, loss, state.model.parameters(), state.step, config)

        # 3. EMA, with a warm-up so early weights do not linger (decay = min(d, (1 + k) / (10 + k)))
        update_ema(state.ema, state.model, min(config.ema_decay, (1 + state.step) / (10 + state.step)))
        state.step += 1
        state.seconds = time.perf_counter() - started
        state.losses.append((state.step, loss.item()))

        written = None
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            spec = ckpt.ModelSpec(
                unet=unet_config,
                schedule=ckpt.ScheduleSpec(config.schedule, config.num_timesteps),
                prediction=config.prediction,
                class_names=data.class_names if conditional else (),
                dataset=dataset_name,
                training={**asdict(config), "steps_done": state.step, "wall_seconds": round(state.seconds, 1),
                          "dataset_size": len(data), "torch": torch.__version__,
                          "parameters": sum(p.numel() for p in state.model.parameters())},
            )
            written = save_training_state(out, spec, state)
        yield TrainEvent(state.step, config.steps, state.losses[-1][1], learning_rate, state.seconds, written)


def save_training_state(out: Path, spec: ckpt.ModelSpec, state: TrainState) -> Path:
    """Write the checkpoint (EMA weights + config), the resumable state, and the loss curve (CSV + PNG)."""
    ckpt.save_model(out, spec, state.ema.state_dict())
    optimizer_state, metadata = ckpt.optimizer_tensors(state.optimizer)
    tensors = {**{f"model.{k}": v for k, v in state.model.state_dict().items()}, **optimizer_state}
    metadata.update(step=str(state.step), seconds=repr(state.seconds))
    ckpt.atomic_save_safetensors(tensors, out / ckpt.TRAINING_STATE_NAME, metadata=metadata)
    _append_losses(out, state)
    return out


def load_training_state(out: Path, state: TrainState) -> None:
    path = Path(out) / ckpt.TRAINING_STATE_NAME
    if not path.is_file():
        raise ckpt.CheckpointError(f"cannot resume: {str(path)!r} does not exist")
    tensors, metadata = ckpt.read_safetensors_with_metadata(path)
    state.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state.ema.load_state_dict(ckpt.read_safetensors(Path(out) / ckpt.WEIGHTS_NAME))
    ckpt.restore_optimizer(state.optimizer, tensors, metadata)
    state.step = int(metadata["step"])
    state.seconds = float(metadata["seconds"])
    state.losses = _read_losses(Path(out), up_to=state.step)


def _append_losses(out: Path, state: TrainState) -> None:
    """Rewrite loss.csv with every step so far and plot it (loss.png)."""
    rows = state.losses
    with open(out / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in rows)
    from difflab.viz.curves import plot_loss_curve

    plot_loss_curve(rows, out / "loss.png")


def _read_losses(out: Path, up_to: int) -> list[tuple[int, float]]:
    path = out / "loss.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle) if int(r["step"]) <= up_to]
