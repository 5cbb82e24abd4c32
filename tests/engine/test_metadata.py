"""A1111 ``parameters`` text and the JSON record in PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from difflab.engine.metadata import format_parameters, parse_parameters, png_info, read_png_metadata

# as AUTOMATIC1111 1.x writes it (its "PNG Info" tab shows exactly this text)
A1111_TEXT = (
    "masterpiece, (red:1.2) circle\n"
    "on a blue background\n"
    "Negative prompt: blurry, low quality\n"
    'Steps: 20, Sampler: DPM++ 2M Karras, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "style: 1a2b3c4d5e6f, hexagon: 0f9e8d7c6b5a", '
    "Version: v1.10.1"
)


def test_parses_a1111_text() -> None:
    prompt, negative, settings = parse_parameters(A1111_TEXT)
    assert prompt == "masterpiece, (red:1.2) circle\non a blue background"
    assert negative == "blurry, low quality"
    assert settings["Steps"] == "20" and settings["Sampler"] == "DPM++ 2M Karras" and settings["CFG scale"] == "7"
    assert settings["Size"] == "512x768" and settings["Model hash"] == "6ce0161689"
    assert settings["Lora hashes"] == "style: 1a2b3c4d5e6f, hexagon: 0f9e8d7c6b5a"  # quoted value with , and :
    assert settings["Version"] == "v1.10.1"


def test_round_trip_and_quoting() -> None:
    settings = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 3, "Size": "64x64",
                "Model": "tiny-shapes", "Lora hashes": "a: 1, b: 2", "Note": 'say "hi"', "Denoising strength": None}
    text = format_parameters("a red circle", "", settings)
    assert "Negative prompt" not in text and "Denoising strength" not in text
    assert 'Lora hashes: "a: 1, b: 2"' in text
    prompt, negative, parsed = parse_parameters(text)
    assert (prompt, negative) == ("a red circle", "")
    assert parsed == {k: str(v) for k, v in settings.items() if v is not None}


def test_prompt_only_text_has_no_settings() -> None:
    assert parse_parameters("just a prompt, with a comma") == ("just a prompt, with a comma", "", {})


def test_png_carries_both_chunks(tmp_path: Path) -> None:
    record = {"request": {"prompt": "a red circle", "seed": 3}, "versions": {"difflab": "0.1.0"}}
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_info(format_parameters("a red circle", "red", {"Steps": 4}), record))
    text, parsed = read_png_metadata(path)
    assert text == "a red circle\nNegative prompt: red\nSteps: 4"
    assert parsed == record
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_png_metadata(tmp_path / "plain.png") == (None, None)
    with pytest.raises(ValueError, match="does not exist"):
        read_png_metadata(tmp_path / "missing.png")
