"""The reference of the LoRA reload tests: a fresh base whose adapters take a run's trained weights from its
training state, so peft's own forward in memory draws what the run learnt."""

from __future__ import annotations

from pathlib import Path

import torch


def restore_trained(config, out: Path):
    """(pipeline in eval mode, its trainable parameters by component) with the LoRA weights of ``out``."""
    from safetensors.torch import load_file

    from difflab.train.loop import STATE_NAME
    from difflab.train.lora import denoiser, load_base, text_encoders, trainable

    pipe, _ = load_base(config)
    params = trainable(pipe, config)
    state = load_file(str(Path(out) / STATE_NAME))
    with torch.no_grad():
        for part, named in params.items():
            for name, parameter in named.items():
                parameter.copy_(state[f"lora.{part}.{name}"])
    for module in (denoiser(pipe), *text_encoders(pipe).values()):
        module.eval()
    return pipe, params
