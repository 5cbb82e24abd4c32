"""Names against paths: the files a user names (LoRAs, VAEs, upscalers, embeddings) are either a path typed on the
command line or a name looked up in a folder that it must not leave."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def looks_like_path(source: str) -> bool:
    """A path the user typed rather than a name: absolute (``~`` counts), or with a separator, or starting with
    '.'. Anything else is a name to look up in a folder."""
    return (Path(source).expanduser().is_absolute() or "/" in source or "\\" in source
            or source.startswith("."))


def within(candidate: Path, folder: Path) -> bool:
    """Whether ``candidate`` really lies in ``folder`` once symlinks are followed (a link may point outside)."""
    return candidate.resolve().is_relative_to(folder.resolve())


def available_hint(names: Iterable[str], folder: Path) -> str:
    """The end of a not-found message: what the folder offers, or that it offers nothing."""
    names = list(names)
    return f"; available: {', '.join(names)}" if names else f" (the folder {str(folder)!r} holds none)"
