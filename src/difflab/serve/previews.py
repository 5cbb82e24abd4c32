"""PreviewBoard: the latest step preview of each running job, as a small base64 PNG, for the progress stream.

Previews live in memory, not in the SQLite queue: they are worth something only while their job runs, a restart
loses nothing that matters, and the worker replaces each one every few steps. The worker writes (``post``) and
drops them when the job ends; the event stream and A1111's ``/sdapi/v1/progress`` read them (``latest``).
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


@dataclass(frozen=True)
class Preview:
    step: int  # denoising steps done when it was made
    width: int
    height: int
    png_base64: str

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "width": self.width, "height": self.height, "format": "png",
                "image": self.png_base64}


class PreviewBoard:
    def __init__(self) -> None:
        self._latest: dict[str, Preview] = {}
        self._lock = threading.Lock()

    def post(self, job_id: str, step: int, image: "Image.Image") -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        preview = Preview(step, image.width, image.height, base64.b64encode(buffer.getvalue()).decode("ascii"))
        with self._lock:
            self._latest[job_id] = preview

    def latest(self, job_id: str) -> Optional[Preview]:
        with self._lock:
            return self._latest.get(job_id)

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._latest.pop(job_id, None)
