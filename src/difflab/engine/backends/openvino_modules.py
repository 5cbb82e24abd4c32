"""OpenVINO-compiled stand-ins for a diffusers pipeline's U-Net, text encoders and VAE.

Each wrapper is an ``nn.Module`` that answers every attribute it does not define from the PyTorch module it
replaces (``config``, ``dtype``, ``device``, ``add_embedding``, ``final_layer_norm``, ...), and implements only
the calls the pipelines make (``unet(...)``, ``text_encoder(ids, output_hidden_states=...)``, ``vae.decode``,
``vae.encode``), returning the same output types. So the pipelines, ``from_pipe`` (img2img, inpainting), the
hires fix, the refiner and difflab's own prompt encoding run unchanged: a backend is a way to run the same modules.

A wrapper converts lazily, on its first call at a size it has not seen (the call's inputs are the trace's
example), through the on-disk cache (openvino_cache.py), and keeps the compiled model in the run's
``OpenVinoRuntime`` so the next request at that size compiles nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter
from typing import Any, Callable, Iterator, Optional

import torch

# conversions, disk loads, compilations and compiled blobs loaded in this process, by component ("convert:unet",
# "load:unet", "compile:unet", "blob:unet"): tests count them, the bench reports them
STATS: Counter = Counter()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OpenVinoRuntime:
    """One run's OpenVINO state: the Core, the compile settings, and compiled models by cache entry."""

    def __init__(self, precision: str, say: Callable[[str], None] = _say) -> None:
        import openvino

        self.precision, self.say = precision, say
        self.core = openvino.Core()
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def compile_config(self) -> dict[str, Any]:
        # the CPU plugin picks bf16 by itself on CPUs that have it: f32 output needs the hint said explicitly.
        # As many threads as PyTorch uses, so the two backends are compared (and share a machine) on equal terms
        return {"INFERENCE_PRECISION_HINT": "f32" if self.precision == "f32" else "bf16",
                "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}

    def compiled(self, component: str, identity: dict[str, Any], module: torch.nn.Module, example) -> Any:
        """The compiled model for ``identity``: from memory, else from the disk cache (converted and compiled:
        openvino_cache.py, openvino_compiled.py), else converted and compiled now."""
        from difflab.engine.backends import openvino_cache
        from difflab.engine.backends.openvino_compiled import compile_entry
        from difflab.engine.backends.openvino_convert import convert

        key = openvino_cache.entry_key(identity)
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
            entry = openvino_cache.lookup(identity, self.say)
            if entry is None:
                entry = openvino_cache.store(identity, lambda folder: convert(component, module, example, folder,
                                                                              self.say))
                STATS[f"convert:{component}"] += 1
                self.say(f"openvino: cached {component} in {entry.folder}")
            else:
                STATS[f"load:{component}"] += 1
            compiled, from_blob = compile_entry(self.core, entry, self.precision, self.compile_config, self.say)
            STATS[f"{'blob' if from_blob else 'compile'}:{component}"] += 1
            self._compiled[key] = compiled
            return compiled


def _numpy(tensor: torch.Tensor, dtype=torch.float32):
    return tensor.detach().to("cpu", dtype).contiguous().numpy()


def _run(compiled, inputs: list) -> list[torch.Tensor]:
    outputs = compiled(inputs)
    return [torch.from_numpy(outputs[port].copy()) for port in compiled.outputs]


class _Wrapper(torch.nn.Module):
    """Attributes it lacks come from the wrapped PyTorch module, which is kept out of ``_modules`` so that
    ``pipeline.to(...)`` and ``.modules()`` see no parameters here."""

    component = ""

    def __init__(self, module: torch.nn.Module, runtime: OpenVinoRuntime, identity: dict[str, Any]) -> None:
        super().__init__()
        self.__dict__["torch_module"] = module
        self.__dict__["runtime"] = runtime
        self.__dict__["identity"] = identity

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["torch_module"], name)

    def _compiled(self, component: str, example: list[torch.Tensor], size: Optional[tuple[int, ...]]):
        from difflab.engine.backends.openvino_identity import with_size

        identity = with_size({**self.identity, "component": component}, size)
        return self.runtime.compiled(component, identity, self.torch_module, example)


class OpenVinoUNet(_Wrapper):
    _UNSUPPORTED = ("class_labels", "timestep_cond", "attention_mask", "down_block_additional_residuals",
                    "mid_block_additional_residual", "down_intrinsic_block_additional_residuals",
                    "encoder_attention_mask")

    def forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None,
                cross_attention_kwargs=None, return_dict: bool = True, **kwargs):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        given = [name for name in self._UNSUPPORTED if kwargs.get(name) is not None] + (["*args"] if any(
            arg is not None for arg in args) else [])
        if cross_attention_kwargs:  # a LoRA scale at call time: difflab fuses LoRAs instead, and never passes it
            given.append("cross_attention_kwargs")
        if given:
            raise NotImplementedError(f"openvino backend: the U-Net was called with {', '.join(given)}, which the "
                                      "converted model does not take")
        batch = sample.shape[0]
        timesteps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        timesteps = timesteps.expand(batch) if timesteps.numel() == 1 else timesteps
        example = [sample.float(), timesteps.contiguous(), encoder_hidden_states.float()]
        if getattr(self.torch_module.config, "addition_embed_type", None) == "text_time":
            example += [added_cond_kwargs["text_embeds"].float(), added_cond_kwargs["time_ids"].float()]
        compiled = self._compiled("unet", example, tuple(sample.shape[2:]))
        [output] = _run(compiled, [_numpy(tensor) for tensor in example])
        output = output.to(sample.dtype)
        return UNet2DConditionOutput(sample=output) if return_dict else (output,)


class OpenVinoTextEncoder(_Wrapper):
    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs):
        if attention_mask is not None or position_ids is not None or kwargs.get("output_attentions"):
            # pipelines pass a mask only for encoders configured to use one (not CLIP's); run the original
            return self.torch_module(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                     output_hidden_states=output_hidden_states, return_dict=return_dict, **kwargs)
        ids = input_ids.to(torch.int64)
        compiled = self._compiled(self.component, [ids], None)
        first, second, *hidden = _run(compiled, [_numpy(ids, torch.int64)])
        output = self._output(first, second, tuple(hidden) if output_hidden_states else None)
        return output if return_dict is not False else output.to_tuple()

    def _output(self, first, second, hidden):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if hasattr(self.torch_module, "text_projection"):  # CLIPTextModelWithProjection: (text_embeds, last hidden)
            from transformers.models.clip.modeling_clip import CLIPTextModelOutput

            return CLIPTextModelOutput(text_embeds=first, last_hidden_state=second, hidden_states=hidden)
        return BaseModelOutputWithPooling(last_hidden_state=first, pooler_output=second, hidden_states=hidden)


class OpenVinoVae(_Wrapper):
    def decode(self, latents, return_dict: bool = True, generator=None, **kwargs):
        from diffusers.models.autoencoders.vae import DecoderOutput

        compiled = self._compiled("vae_decoder", [latents.float()], tuple(latents.shape[2:]))
        [image] = _run(compiled, [_numpy(latents)])
        image = image.to(latents.dtype)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def encode(self, image, return_dict: bool = True):
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        compiled = self._compiled("vae_encoder", [image.float()], tuple(image.shape[2:]))
        [moments] = _run(compiled, [_numpy(image)])
        posterior = DiagonalGaussianDistribution(moments.to(image.dtype))  # sampled with the request's generators
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("openvino backend: pipelines call vae.encode and vae.decode, not the VAE itself")


def _text_encoder(name: str):
    return type(f"OpenVino{name.title().replace('_', '')}", (OpenVinoTextEncoder,), {"component": name})


WRAPPERS = {"unet": OpenVinoUNet, "text_encoder": _text_encoder("text_encoder"),
            "text_encoder_2": _text_encoder("text_encoder_2"), "vae": OpenVinoVae}


@contextlib.contextmanager
def swapped(pipeline, runtime: OpenVinoRuntime, identities: dict[str, dict[str, Any]]) -> Iterator[None]:
    """The pipeline's modules named in ``identities`` (unet, text_encoder, text_encoder_2, vae) replaced by
    wrappers for the block; the originals are always put back, so the cached pipeline stays a PyTorch one."""
    originals = {name: getattr(pipeline, name) for name in identities if getattr(pipeline, name, None) is not None}
    try:
        for name, module in originals.items():
            setattr(pipeline, name, WRAPPERS[name](module, runtime, identities[name]))
        yield
    finally:
        for name, module in originals.items():
            setattr(pipeline, name, module)
