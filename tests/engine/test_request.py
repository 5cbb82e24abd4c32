"""GenerationRequest: every bad field named, in one line, before anything runs."""

from __future__ import annotations

import pytest

from difflab.engine.request import MAX_IMAGES, RequestError, build_request

BAD = {
    "width not a multiple of 8": ({"width": 100}, "width: must be a multiple of 8, e.g. 96 or 104"),
    "height too small": ({"height": 0}, "height: Input should be greater than or equal to 8"),
    "height too large": ({"height": 8192}, "height: Input should be less than or equal to 4096"),
    "steps < 1": ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
    "guidance < 0": ({"guidance": -1}, "guidance: must be a finite number >= 0"),
    "guidance NaN": ({"guidance": float("nan")}, "guidance: must be a finite number >= 0"),
    "n too large": ({"n": MAX_IMAGES + 1}, f"n: Input should be less than or equal to {MAX_IMAGES}"),
    "unknown scheduler": ({"scheduler": "warp"}, "scheduler: scheduler must be one of"),
    "negative seed": ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    "empty prompt": ({"prompt": "  "}, "prompt: must not be empty"),
    "unknown field": ({"cfg": 7}, "cfg: is not a known field"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_fields_are_named(case: str) -> None:
    fields, message = BAD[case]
    with pytest.raises(RequestError) as error:
        build_request(**{"prompt": "a red circle", **fields})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_several_bad_fields_are_all_reported() -> None:
    with pytest.raises(RequestError) as error:
        build_request(prompt="x", width=7, steps=0)
    assert "width:" in str(error.value) and "steps:" in str(error.value)


def test_scheduler_alias_becomes_a1111_name_and_defaults_stay_open() -> None:
    request = build_request(prompt="a red circle", scheduler="dpmpp_2m_karras")
    assert request.scheduler == "DPM++ 2M Karras"
    assert request.steps is None and request.width is None  # filled from the model's preset by the engine
    assert build_request(**request.model_dump()) == request
