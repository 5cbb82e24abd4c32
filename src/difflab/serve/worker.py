"""Worker: the one thread that owns the pipelines and runs the queue's jobs, oldest first.

One worker, because a pipeline is one model in memory that runs one batch at a time: two threads on it would
only race for the same device (ComfyUI's design: an async front end takes requests, one worker executes them).
Progress goes into the JobStore after every denoising step, which is also where a cancel request is noticed:
the step callback raises, and the pipeline stops within one step. With ``preview_every`` the engine also hands
back a preview of the denoised estimate every that many steps, kept (in memory) on ``previews`` for the
progress stream.
"""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path
from typing import Optional

from difflab.serve.previews import PreviewBoard
from difflab.serve.queue import Job, JobStore

log = logging.getLogger("difflab.serve")


class JobCancelled(Exception):
    """Raised inside the step callback to stop a job the client cancelled."""


class WorkerStopping(Exception):
    """Raised inside the step callback when the server shuts down: the job goes back to the queue."""


class Worker:
    def __init__(self, store: JobStore, images_dir: Path, cache=None, idle_wait_s: float = 1.0, *,
                 preview_every: int = 0, preview_max_side: int = 256):
        from difflab.engine.pipeline import PipelineCache

        self.store = store
        self.images_dir = Path(images_dir)
        self.cache = cache if cache is not None else PipelineCache()
        self.idle_wait_s = idle_wait_s
        self.preview_every = preview_every  # 0: no previews
        self.preview_max_side = preview_max_side
        self.previews = PreviewBoard()  # the running job's latest preview, for the event stream
        self.current: Optional[Job] = None  # the job running now (for /sdapi/v1/progress)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="difflab-worker", daemon=True)

    def start(self) -> None:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; an unfinished job is re-queued, not lost."""
        self._stop.set()
        self.store.notify()  # wake the idle wait
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self.store.wait_for_change(self.idle_wait_s)
                continue
            self.current = job
            try:
                self.run_job(job)
            except Exception:  # never let one job kill the worker: the queue behind it would stall forever
                log.error("job %s: unexpected error\n%s", job.id, traceback.format_exc())
                self.store.fail(job.id, "internal error (see the server log)")
            finally:
                self.current = None
                self.previews.drop(job.id)

    def run_job(self, job: Job) -> None:
        from pydantic import ValidationError

        from difflab.engine.outputs import save_result
        from difflab.engine.pipeline import run
        from difflab.engine.request import GenerationRequest, describe_validation_error

        # 1. The request was validated when it was submitted; validate again because an input file may be gone.
        try:
            request = GenerationRequest.model_validate(job.request)
        except ValidationError as error:
            self.store.fail(job.id, describe_validation_error(error))
            return

        # 2. Run it, reporting every step and stopping when asked.
        def on_step(done: int, total: int) -> None:
            if self.store.set_progress(job.id, done, total):
                raise JobCancelled
            if self._stop.is_set():
                raise WorkerStopping

        try:
            result = run(request, self.cache, on_step=on_step, previews=self._previews_for(job))
        except JobCancelled:
            self.store.mark_cancelled(job.id)
            return
        except WorkerStopping:
            self.store.requeue(job.id)
            return
        except ValueError as error:  # the engine's "bad input" errors name the field
            self.store.fail(job.id, str(error))
            return
        except Exception as error:
            log.error("job %s failed\n%s", job.id, traceback.format_exc())
            self.store.fail(job.id, f"internal error: {type(error).__name__}: {error}")
            return

        # 3. Write the PNGs (atomically, named by job id so a re-run after a crash replaces, never duplicates),
        #    then mark the job done: a job is 'done' only once its files exist.
        paths = save_result(result, self.images_dir, prefix=f"{job.id}-")
        images = [{"file": path.name, "seed": seed, "index": index}
                  for index, (path, seed) in enumerate(zip(paths, result.seeds))]
        self.store.finish(job.id, images)
        log.info("job %s done: %d image(s) in %.2f s", job.id, len(images), result.seconds)

    def _previews_for(self, job: Job):
        """What the engine should preview for ``job``: its first image every ``preview_every`` steps, or None."""
        if not self.preview_every:
            return None
        from difflab.engine.progress import Previews

        return Previews(every=self.preview_every, max_side=self.preview_max_side,
                        on_preview=lambda done, images: self.previews.post(job.id, done, images[0]))
