"""Input images are bounded like width/height (issue 19): the size is read from the header before decoding, so
a tiny-on-disk, huge-in-pixels PNG is refused naming its field, never decoded, never a PIL traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from difflab.engine.image_limits import MAX_SIDE, open_bounded
from difflab.engine.request import RequestError, build_request
from tests.engine.huge_png import huge_png

HUGE = {"1-bit 11000x11000 (15 kB)": 11000, "decompression bomb 20000x20000 (48 kB)": 20000, "4104x4104": 4104}


def write(path: Path, side: int) -> Path:
    path.write_bytes(huge_png(side, side))
    return path


def small(path: Path, size=(32, 32)) -> Path:
    Image.new("RGB", size, "red").save(path)
    return path


def test_the_limit_is_read_from_the_header_and_equals_width_and_heights(tmp_path: Path) -> None:
    with open_bounded(write(tmp_path / "edge.png", MAX_SIDE), "init_image") as image:
        assert image.size == (MAX_SIDE, MAX_SIDE)
    with pytest.raises(ValueError, match=rf"^init_image: .* is 4104x4104 pixels; at most {MAX_SIDE} pixels per side"):
        open_bounded(write(tmp_path / "over.png", 4104), "init_image", label="'over.png'")
    with pytest.raises(ValueError, match=r"^mask: the image is 400,000,000 pixels; at most 4096x4096"):
        open_bounded(huge_png(20000, 20000), "mask")  # PIL's own bomb error, turned into ours


@pytest.mark.parametrize("case", HUGE)
@pytest.mark.parametrize("field", ["init_image", "mask", "controls.0.image"])
def test_every_input_image_field_is_bounded(case: str, field: str, tmp_path: Path) -> None:
    big = str(write(tmp_path / "big.png", HUGE[case]))
    fields = {"init_image": {"init_image": big},
              "mask": {"init_image": str(small(tmp_path / "init.png")), "mask": big},
              "controls.0.image": {"controls": [f"canny:{big}"]}}[field]
    started = time.monotonic()
    with pytest.raises(RequestError) as error:
        build_request(prompt="a red circle", **fields)
    message = str(error.value)
    assert f"{field}: " in message and f"at most {MAX_SIDE}" in message and "\n" not in message, message
    assert time.monotonic() - started < 2, "refused from the header, not after decoding"


def test_hires_fix_output_is_bounded_like_width_and_height(tiny_sd_folder: Path) -> None:
    from difflab.engine.modes import check_request_settings

    check_request_settings(build_request(prompt="a", model=str(tiny_sd_folder), width=1024, height=64,
                                         hires_scale=4))  # 4096 wide: the limit itself is allowed
    with pytest.raises(ValueError, match=r"^hires_scale: 4.0 makes 8192x256 images from 2048x64; at most 4096"):
        check_request_settings(build_request(prompt="a", model=str(tiny_sd_folder), width=2048, height=64,
                                             hires_scale=4))


@pytest.mark.parametrize("side", [4104, 20000])
def test_generate_cli_refuses_a_huge_init_image_before_loading_weights(side: int, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from difflab.cli import app

    monkeypatch.chdir(tmp_path)
    big = write(tmp_path / "big.png", side)
    started = time.monotonic()
    result = CliRunner().invoke(app, ["generate", "a red circle", "--init-image", str(big), "-o", "out"])
    assert result.exit_code == 2, result.output
    assert "init_image" in result.output and f"at most {MAX_SIDE}" in result.output, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()
