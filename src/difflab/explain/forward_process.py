"""``difflab explain forward-process``: noising to any step in one jump, and the digits model undoing it."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from difflab.explain.common import Context, save, wrap


def run(ctx: Context) -> Iterator[str]:
    from difflab.core.checkpoint import load_model
    from difflab.core.generate import denoiser_for
    from difflab.core.process import q_sample
    from difflab.viz.forward import load_image_tensor
    from difflab.viz.grid import make_grid, to_pil

    yield "Training noises a real image to a random step t in one jump:"
    yield "    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)"
    yield "and teaches the network to predict eps. Below, a real digit noised to six steps, and the bundled"
    yield "digits model's estimate of the clean image from each noisy one, in a single network call:"
    model = load_model(ctx.digits)
    schedule, denoiser = model.schedule, denoiser_for(model)
    x_0 = load_image_tensor("digit:0", model.spec.unet.image_size)  # (1, 1, 8, 8)
    label = torch.tensor([0]) if model.spec.unet.num_classes else None
    noise = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(ctx.seed))
    steps = [0, 100, 250, 500, 750, schedule.num_timesteps - 1]
    noisy, estimates, rows = [], [], []
    yield f"{'t':>6} {'signal kept':>12} {'error of x0 estimate (RMS)':>28}"
    with torch.inference_mode():
        for t in steps:
            x_t = q_sample(schedule, x_0, torch.tensor([t]), noise).float()
            alpha_bar = float(schedule.alphas_cumprod[t])
            sigma = schedule.sigmas[t].reshape(1)
            estimate = denoiser(x_t / alpha_bar**0.5, sigma, label).clamp(-1, 1)  # the VE-scale input it expects
            noisy.append(x_t)
            estimates.append(estimate)
            error = float((estimate - x_0).pow(2).mean().sqrt()) / 2  # on the [0, 1] pixel scale
            rows.append((t, alpha_bar, error))
            yield f"{t:>6} {alpha_bar:>11.1%} {error:>28.3f}"
    yield from wrap(sentences(rows))
    yield "That is why training covers every t: generation starts from pure noise and needs the network at every"
    yield "noise level on the way back."
    tiles = to_pil(torch.cat(noisy).clamp(-1, 1)) + to_pil(torch.cat(estimates))
    grid = make_grid(tiles, columns=len(steps), scale=8, labels=[f"t={t}" for t in steps],
                     row_labels=["x_t", "x0 est."])
    path = save(grid, ctx, "forward-process.png")
    yield "figure (rows: x_t, the model's x0 estimate; columns: t):"
    yield str(path)


def sentences(rows: Sequence[tuple[int, float, float]]) -> str:
    """What the table shows, from its rows (t, signal kept, RMS error): where the estimate is best and worst, and
    whether the error grows with t."""
    first, last = rows[1] if len(rows) > 1 else rows[0], rows[-1]
    best = min(rows, key=lambda row: row[2])
    worst = max(rows, key=lambda row: row[2])
    errors = [row[2] for row in rows]
    text = (f"At t = {first[0]}, with {first[1]:.1%} of the signal kept, the estimate is off by {first[2]:.3f}; "
            f"at t = {last[0]}, with {last[1]:.1%} kept, by {last[2]:.3f}. ")
    if all(b >= a for a, b in zip(errors, errors[1:])):
        text += "The error grows with every step of noise: the less of the digit is left, the more the estimate " \
                "has to guess."
    else:
        text += (f"The error is smallest at t = {best[0]} ({best[2]:.3f}) and largest at t = {worst[0]} "
                 f"({worst[2]:.3f}), not rising at every step: the network is better at some noise levels than "
                 "others.")
    return text
