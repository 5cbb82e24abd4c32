"""``--lora NAME_OR_PATH[:WEIGHT]``: a weight that is not a number is named as such (it used to read as a LoRA
called 'x:abc' that was "not found"), while Windows drive paths and names containing colons still work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.lora import LoraError, LoraSpec, parse_lora_spec


@pytest.mark.parametrize("text,spec", [
    ("hexagon", LoraSpec("hexagon", 1.0)),
    ("hexagon:0.8", LoraSpec("hexagon", 0.8)),
    ("loras/x.safetensors:-0.5", LoraSpec("loras/x.safetensors", -0.5)),
    ("C:\\loras\\a.safetensors:0.7", LoraSpec("C:\\loras\\a.safetensors", 0.7)),
    ("C:\\loras\\a.safetensors", LoraSpec("C:\\loras\\a.safetensors", 1.0)),  # the drive's colon is no weight
    ("D:/loras/a", LoraSpec("D:/loras/a", 1.0)),
    ("my:style:1", LoraSpec("my:style", 1.0)),  # a name with a colon, weighted explicitly
])
def test_specs(text: str, spec: LoraSpec) -> None:
    assert parse_lora_spec(text) == spec
    assert parse_lora_spec(str(spec)) == spec  # the request's canonical "name:weight" reads back the same


@pytest.mark.parametrize("text,weight", [("x:abc", "abc"), ("x:", ""), ("C:\\loras\\a.safetensors:strong", "strong")])
def test_a_weight_that_is_not_a_number_is_named(text: str, weight: str) -> None:
    with pytest.raises(LoraError, match=re.escape(f"lora {text!r}: weight {weight!r} is not a number")):
        parse_lora_spec(text)


def test_an_existing_lora_whose_name_has_a_colon_needs_no_weight(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DIFFLAB_LORA_DIR", str(tmp_path))
    (tmp_path / "style:v2.safetensors").write_bytes(b"")
    assert parse_lora_spec("style:v2") == LoraSpec("style:v2", 1.0)


def test_generate_names_the_bad_weight_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "a circle", "--lora", "x:abc", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output == ("error: loras: lora 'x:abc': weight 'abc' is not a number; write NAME_OR_PATH[:WEIGHT], "
                             "e.g. hexagon:0.8 (a name with a colon takes its weight: my:style:1)\n")
    assert not (tmp_path / "out").exists()
