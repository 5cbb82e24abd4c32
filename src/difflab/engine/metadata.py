"""Generation parameters inside PNG files, in AUTOMATIC1111's format and as a full JSON record.

A1111 writes one ``tEXt`` chunk named ``parameters``:

    a red circle on a blue background
    Negative prompt: blurry, low quality
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 3a9c1f20e4, Model: tiny-shapes

Civitai, ComfyUI's loaders, InvokeAI's importer and A1111's own "PNG Info" tab read it, so difflab writes it too.
The last line is ``key: value`` pairs separated by ", "; a value containing a comma or a colon is quoted as JSON,
as A1111 does. Beside it goes a ``difflab`` chunk holding the complete request and library versions as JSON: the
A1111 line is for people and other tools, the JSON is what ``replay`` trusts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"
RECORD_KEY = "difflab"
NEGATIVE_PREFIX = "Negative prompt: "


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if ("," in text or ":" in text or '"' in text) else text


def format_parameters(prompt: str, negative_prompt: str, settings: Mapping[str, Any]) -> str:
    """The A1111 ``parameters`` text: prompt, optional negative prompt line, then ``Key: value`` pairs in order."""
    lines = [prompt]
    if negative_prompt:
        lines.append(NEGATIVE_PREFIX + negative_prompt)
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


def lora_prompt_tags(loras: Sequence[tuple[str, float]]) -> str:
    """A1111's prompt syntax for LoRAs, appended to the prompt: `` <lora:hexagon:0.8> <lora:style:0.5>``."""
    return "".join(f" <lora:{name}:{weight:g}>" for name, weight in loras)


_LORA_TAG = re.compile(r"\s*<lora:([^:>]+)(?::([-+]?[0-9]*\.?[0-9]+))?>")


def parse_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The inverse of ``lora_prompt_tags``: (prompt without its ``<lora:name:weight>`` tags, [(name, weight)]);
    A1111's default weight is 1."""
    loras = [(name, float(weight) if weight else 1.0) for name, weight in _LORA_TAG.findall(prompt)]
    return _LORA_TAG.sub("", prompt).strip(), loras


def format_lora_hashes(hashes: Sequence[tuple[str, str]]) -> str:
    """The value of A1111's ``Lora hashes`` setting: ``name: hash, name: hash`` (quoted by format_parameters)."""
    return ", ".join(f"{name}: {hash_}" for name, hash_ in hashes)


def format_controlnet_unit(fields: Mapping[str, Any]) -> str:
    """One unit of sd-webui-controlnet's infotext, ``Module: canny, Model: name [hash], Weight: 1.0, ...``; the
    caller stores it as ``ControlNet N``, and format_parameters quotes it (it holds commas)."""
    return ", ".join(f"{key}: {value}" for key, value in fields.items() if value is not None)


# one "Key: value" pair: the value is a JSON string or runs to the next ", Key:" (A1111's own re_param)
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, settings) from an A1111 ``parameters`` text; values stay strings."""
    lines = text.strip().split("\n")
    settings: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:  # the settings line has Steps, Sampler, ... pairs
        for key, value in _PAIR.findall(lines.pop()):
            settings[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):]
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), settings


def png_info(parameters: str, record: Mapping[str, Any] | None = None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    if record is not None:
        info.add_text(RECORD_KEY, json.dumps(record, sort_keys=True, ensure_ascii=False))
    return info


def read_png_metadata(path: str | Path) -> tuple[str | None, dict[str, Any] | None]:
    """(A1111 parameters text, difflab JSON record) of a PNG; None for whichever is absent."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or image.info)
    except OSError as error:
        raise ValueError(f"image {str(path)!r} cannot be read ({error})") from None
    record = text.get(RECORD_KEY)
    try:
        parsed = json.loads(record) if record else None
    except json.JSONDecodeError:
        raise ValueError(f"image {str(path)!r}: its difflab metadata is not valid JSON") from None
    return text.get(PARAMETERS_KEY), parsed
