"""What every ``difflab explain`` topic shares: the context it runs in, saving its figure, and the wording of
numbers, so that every sentence a topic prints is made from the numbers printed beside it (never a fixed claim
that the numbers may contradict)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence


@dataclass(frozen=True)
class Topic:
    name: str
    summary: str
    run: Callable[["Context"], Iterator[str]]
    model_kind: str  # "digits" or "text-to-image": which model the walk-through runs on
    check: Optional[Callable[[str], None]] = None  # what the model must also have (ValueError), before any write


@dataclass(frozen=True)
class Context:
    out: Path  # folder for figures
    model: str  # text-to-image model for the topics that need one
    digits: Path  # digits checkpoint folder
    seed: int = 0


def save(image, ctx: Context, name: str) -> Path:
    """Write a PIL figure atomically into the topic's folder."""
    from difflab.io.atomic import atomic_write_bytes
    from difflab.viz.grid import png_bytes

    path = ctx.out / name
    atomic_write_bytes(path, png_bytes(image))
    return path


def pipeline(ctx: Context, cache=None):
    """The text-to-image model and its pipeline from ``cache`` (pass the cache the topic then draws with, so the
    model loads once); ModelNotAvailable (a ValueError) names what is missing."""
    from difflab.engine.pipeline import PipelineCache
    from difflab.engine.registry import resolve_model

    model = resolve_model(ctx.model)
    loaded, _ = (cache if cache is not None else PipelineCache()).get(model)
    return model, loaded


def percent(value: float) -> str:
    """A share as the tables print it (one decimal), so a sentence quotes the table's own figure."""
    return f"{100 * value:.1f}%"


def compare(value: float, reference: float, *, tolerance: float = 1e-9, higher: str = "higher",
            lower: str = "lower", same: str = "the same") -> str:
    """The word for how ``value`` stands against ``reference``."""
    if abs(value - reference) <= tolerance:
        return same
    return higher if value > reference else lower


def listing(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def wrap(text: str, width: int = 110) -> list[str]:
    """A generated paragraph as terminal lines."""
    import textwrap

    return textwrap.wrap(text, width)
