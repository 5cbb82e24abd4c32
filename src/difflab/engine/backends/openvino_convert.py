"""Converting one pipeline component to OpenVINO: a traceable adapter per component, then ``openvino.convert_model``.

diffusers and transformers modules take keyword arguments and return dataclasses; ``convert_model`` traces a
module called with positional tensors and returning tensors. Each adapter below is that thin signature over the
real module (nothing is reimplemented), and openvino_modules.py turns the outputs back into the types the
pipelines expect.

Shapes: the trace uses the call's own inputs (the request's size). The converted model keeps the batch dimension
dynamic (classifier-free guidance doubles it, the guidance interval halves it again mid-run, n images multiply it)
and fixes the spatial ones, which the CPU plugin compiles to faster kernels; another size is another cache entry.
Text encoders keep batch and sequence length dynamic (long prompts are encoded in 77-token chunks).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder")


class UNetAdapter(torch.nn.Module):
    """UNet2DConditionModel with positional inputs; SDXL's added conditions (pooled text, size/crop ids) when
    ``text_time`` is on."""

    def __init__(self, unet: torch.nn.Module, text_time: bool) -> None:
        super().__init__()
        self.unet, self.text_time = unet, text_time

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.text_time else None
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class TextEncoderAdapter(torch.nn.Module):
    """A CLIP text encoder returning its two outputs and every hidden state, so one converted model serves both
    the pipelines' plain call and clip skip / SDXL's penultimate layer."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        output = self.encoder(input_ids, output_hidden_states=True, return_dict=True)
        return (output[0], output[1], *output.hidden_states)


class VaeDecoderAdapter(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents):  # (B, C, h, w) -> (B, 3, 8h, 8w)
        return self.vae.decode(latents, return_dict=False)[0]


class VaeEncoderAdapter(torch.nn.Module):
    """The posterior's parameters (mean and log-variance, stacked on channels): sampling from them needs the
    request's generators, so it stays in PyTorch (openvino_modules.OpenVinoVae.encode)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image):  # (B, 3, H, W) -> (B, 2C, H/8, W/8)
        return self.vae.encode(image, return_dict=False)[0].parameters


def adapter_for(component: str, module: torch.nn.Module) -> torch.nn.Module:
    if component == "unet":
        return UNetAdapter(module, getattr(module.config, "addition_embed_type", None) == "text_time")
    if component.startswith("text_encoder"):
        return TextEncoderAdapter(module)
    if component == "vae_decoder":
        return VaeDecoderAdapter(module)
    if component == "vae_encoder":
        return VaeEncoderAdapter(module)
    raise ValueError(f"openvino: unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")


def input_shapes(component: str, example: Sequence[torch.Tensor]) -> list[list[int]]:
    """The converted model's input shapes, -1 for dynamic: batch always; sequence length for text; spatial
    dimensions fixed to the example's."""
    if component.startswith("text_encoder"):
        return [[-1, -1]]
    if component == "unet":  # sample (B, C, h, w), timestep (B,), encoder_hidden_states (B, T, D), [text_embeds, time_ids]
        return [[-1, *example[0].shape[1:]], [-1], [-1, -1, example[2].shape[2]],
                *[[-1, *tensor.shape[1:]] for tensor in example[3:]]]
    return [[-1, *example[0].shape[1:]]]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def convert(component: str, module: torch.nn.Module, example: Sequence[torch.Tensor], folder: Path,
            say: Callable[[str], None]) -> None:
    """Trace ``module`` (as ``component``) on ``example``, convert it, and save ``model.xml``/``model.bin`` into
    ``folder``, saying what happens. Weights are saved as float32 (``compress_to_fp16=False``): f32 output must
    match PyTorch's; bf16 is chosen when compiling."""
    import openvino

    from difflab.engine.backends.openvino_cache import MODEL_XML

    adapter = adapter_for(component, module).eval()
    shape = "x".join(str(size) for size in example[0].shape)
    say(f"openvino: converting {component} ({parameter_count(module) / 1e6:.1f}M parameters, input {shape}) "
        "from PyTorch; once per model, LoRA set, size and precision (a U-Net of SD 1.5's size takes minutes)")
    started = time.perf_counter()
    with _heartbeat(component, started, say), torch.no_grad(), _quiet_tracer():
        converted = openvino.convert_model(adapter, example_input=tuple(example))
    converted.reshape({port: openvino.PartialShape(shape)
                       for port, shape in zip(converted.inputs, input_shapes(component, example))})
    say(f"openvino: converted {component} in {time.perf_counter() - started:.1f} s; saving")
    openvino.save_model(converted, str(folder / MODEL_XML), compress_to_fp16=False)


class _heartbeat:
    """A line every 20 s while a conversion runs: it has no progress of its own, and minutes of silence read as
    a hang."""

    def __init__(self, component: str, started: float, say: Callable[[str], None], every_s: float = 20.0):
        self.component, self.started, self.say, self.every_s = component, started, say, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.say(f"openvino: still converting {self.component} ({time.perf_counter() - self.started:.0f} s)")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _quiet_tracer:
    """TorchScript's TracerWarnings ("converting a tensor to a Python boolean...") are about shape checks in
    diffusers that are constant for a fixed input size: noise to a user, not a problem."""

    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*TracerWarning.*")
        # torch 2.13 deprecates jit.trace, which openvino's PyTorch frontend still uses; and transformers' notice
        # about a renamed checkpointing attribute that the frontend reads
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
