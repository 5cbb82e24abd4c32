"""The reference of the LoRA reload tests: a fresh base whose adapters take a run's trained weights from its
training state, so peft's own forward in memory draws what the run learnt; and the check that plain diffusers,
loading the run's file, draws the same."""

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


def assert_plain_diffusers_draws_it(pipeline_class, base: Path, out: Path, expected, draw):
    """Load ``base`` with ``pipeline_class``, then ``out``'s LoRA file with its ``load_lora_weights``: the image
    ``draw(pipe)`` gives must differ from the base's and equal ``expected`` (atol 1e-5). Returns the pipeline."""
    import numpy as np

    pipe = pipeline_class.from_pretrained(str(base))
    before = draw(pipe)
    pipe.load_lora_weights(str(out))
    reloaded = draw(pipe)
    assert np.abs(reloaded - before).max() > 1e-3, "the LoRA changes nothing: the test could not fail"
    np.testing.assert_allclose(reloaded, expected, atol=1e-5)
    return pipe
