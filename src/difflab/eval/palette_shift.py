"""Style score of the "shifted" colour style (:mod:`difflab.data.palette_shift`): which colours did the image use?

The adherence analyzer (:func:`difflab.eval.adherence.read_image`) reads the shape's colour and the background
off the image; the prompt (:func:`~difflab.data.shapes.parse_prompt`) says which colours were asked for. Per
colour field the prompt names, the image is

- *shifted* when the reading is the asked colour moved by ``PALETTE_SHIFT`` (the style took),
- *as asked* when it is the asked colour itself (the style did not take),
- neither (another colour, or unreadable).

An image's style score is its share of shifted fields (0, 0.5 or 1 for a prompt naming both colours); a set of
images scores the share over all their fields. ``PALETTE_SHIFT`` moves every colour, so the two cannot both hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from difflab.data.palette_shift import PALETTE_SHIFT
from difflab.data.shapes import parse_prompt
from difflab.eval.adherence import Reading, read_image

COLOR_FIELDS = ("color", "background")


@dataclass(frozen=True)
class ShiftScore:
    """Shares over every colour field the prompts named (``fields`` of them); ``shifted + as_asked <= 1``."""

    shifted: Optional[float]  # read colour = PALETTE_SHIFT[asked]: the style score; None when no field was named
    as_asked: Optional[float]  # read colour = asked: the prompt's own colours
    fields: int


def field_outcomes(reading: Reading, prompt: str) -> list[str]:
    """"shifted", "as_asked" or "other" for each colour field ``prompt`` names, in COLOR_FIELDS order."""
    asked = parse_prompt(prompt)
    outcomes = []
    for name in COLOR_FIELDS:
        wanted, seen = getattr(asked, name), getattr(reading, name)
        if wanted is None:
            continue
        outcomes.append("shifted" if seen == PALETTE_SHIFT[wanted] else "as_asked" if seen == wanted else "other")
    return outcomes


def shift_score(image: Any, prompt: str, reading: Optional[Reading] = None) -> Optional[float]:
    """One image's style score, 0..1 (None when the prompt names no colour); pass ``reading`` to reuse one."""
    outcomes = field_outcomes(read_image(image) if reading is None else reading, prompt)
    return outcomes.count("shifted") / len(outcomes) if outcomes else None


def score_shift(images: Sequence[Any], prompts: Sequence[str],
                readings: Optional[Sequence[Reading]] = None) -> ShiftScore:
    """The shares over a set of images, image i generated for ``prompts[i]``; ``readings`` reuses readings."""
    if len(images) != len(prompts):
        raise ValueError(f"need one prompt per image, got {len(images)} images and {len(prompts)} prompts")
    if readings is not None and len(readings) != len(images):
        raise ValueError(f"need one reading per image, got {len(readings)} readings for {len(images)} images")
    readings = [read_image(image) for image in images] if readings is None else readings
    outcomes = [o for reading, prompt in zip(readings, prompts) for o in field_outcomes(reading, prompt)]
    if not outcomes:
        return ShiftScore(None, None, 0)
    return ShiftScore(outcomes.count("shifted") / len(outcomes), outcomes.count("as_asked") / len(outcomes),
                      len(outcomes))
