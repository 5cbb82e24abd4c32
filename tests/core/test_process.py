"""Forward process, posterior and parameterisations against closed forms and diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from difflab.core import process
from difflab.core.schedules import NoiseSchedule

SCHEDULE = NoiseSchedule.create("linear")


def test_q_sample_matches_diffusers_add_noise() -> None:
    x_0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    expected = DDPMScheduler(num_train_timesteps=1000).add_noise(x_0, eps, t)
    # diffusers keeps alpha_bar as a float32 cumprod: ~1e-6 absolute from float64
    torch.testing.assert_close(process.q_sample(SCHEDULE, x_0, t, eps), expected, rtol=1e-5, atol=1e-5)


def test_q_sample_statistics() -> None:
    """x_t ~ N(sqrt(ab) x_0, (1 - ab) I): check mean and variance over many draws."""
    t = torch.full((200_000,), 300)
    x_0 = torch.full((200_000, 1), 0.8)
    x_t = process.q_sample(SCHEDULE, x_0, t, torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0)))
    alpha_bar = SCHEDULE.alphas_cumprod[300].item()
    assert x_t.mean().item() == pytest.approx(alpha_bar**0.5 * 0.8, abs=0.005)
    assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=0.01)


def test_posterior_is_bayes_rule_for_scalars() -> None:
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): product of two Gaussians in x_{t-1}."""
    for t in (1, 5, 400, 999):
        alpha_bar = SCHEDULE.alphas_cumprod
        beta, a_prev = SCHEDULE.betas[t].item(), alpha_bar[t - 1].item()
        x_0, x_t = torch.tensor([[0.3]]), torch.tensor([[-1.2]])
        # likelihood in x_{t-1}: N(x_t / sqrt(1 - beta), beta / (1 - beta)); prior: N(sqrt(a_prev) x_0, 1 - a_prev)
        precision = (1 - beta) / beta + 1 / (1 - a_prev)
        mean = ((x_t.item() / (1 - beta) ** 0.5) * (1 - beta) / beta + a_prev**0.5 * x_0.item() / (1 - a_prev)) / precision
        got_mean, got_var = process.q_posterior_mean_variance(SCHEDULE, x_0, x_t, torch.tensor([t]))
        assert got_mean.item() == pytest.approx(mean, rel=1e-5)
        assert got_var.item() == pytest.approx(1 / precision, rel=1e-5)


def test_parameterisations_round_trip() -> None:
    x_0, eps = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([3, 300, 900])
    x_t = process.q_sample(SCHEDULE, x_0, t, eps)
    torch.testing.assert_close(process.predict_x0_from_eps(SCHEDULE, x_t, t, eps), x_0)
    torch.testing.assert_close(process.predict_eps_from_x0(SCHEDULE, x_t, t, x_0), eps)
    v = process.velocity(SCHEDULE, x_0, t, eps)
    torch.testing.assert_close(process.predict_x0_from_v(SCHEDULE, x_t, t, v), x_0)
    # diffusers' get_velocity is an independent implementation of the same definition
    expected_v = DDPMScheduler(num_train_timesteps=1000).get_velocity(x_0.float(), eps.float(), t)
    torch.testing.assert_close(v.float(), expected_v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weight_matches_diffusers_training_scripts(prediction: str) -> None:
    """diffusers' train_text_to_image.py: min(snr, gamma) / snr (epsilon) or / (snr + 1) (v); Hang et al.: x0."""
    snr = SCHEDULE.snr[torch.tensor([0, 50, 300, 999])]
    gamma = 5.0
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction]
    torch.testing.assert_close(process.min_snr_weight(snr, prediction, gamma), expected)  # type: ignore[arg-type]


def test_loss_is_mse_to_target_and_weights_apply() -> None:
    x_0, eps, output = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([10, 900])
    plain = process.diffusion_loss(SCHEDULE, "epsilon", output, x_0, t, eps)
    assert plain.item() == pytest.approx(((output - eps) ** 2).mean().item(), rel=1e-6)
    weighted = process.diffusion_loss(SCHEDULE, "epsilon", output, x_0, t, eps, min_snr_gamma=5.0)
    per_sample = ((output - eps) ** 2).flatten(1).mean(1)
    weights = process.min_snr_weight(SCHEDULE.snr[t], "epsilon", 5.0).float()
    assert weighted.item() == pytest.approx((weights * per_sample).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="epsilon, sample, v_prediction"):
        process.training_target(SCHEDULE, "score", x_0, t, eps)  # type: ignore[arg-type]
