"""Worker: the one thread that owns the pipelines and runs the queue's jobs, oldest first.

One worker, because a pipeline is one model in memory that runs one batch at a time: two threads on it would
only race for the same device (ComfyUI's design: an async front end takes requests, one worker executes them).
Progress goes into the JobStore after every denoising step, which is also where a cancel request is noticed:
the step callback raises, and the pipeline stops within one step. With ``preview_every`` the engine also hands
back a preview of the denoised estimate every that many steps, kept (in memory) on ``previews`` for the
progress stream.

With ``batch_max_images > 1`` the worker takes the oldest queued job together with the compatible jobs queued
right behind it (same everything but prompt, negative prompt, seed and n: engine.merged) and draws them in one
pipeline call, each job still getting exactly its own images, seeds and metadata.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from difflab.serve.previews import PreviewBoard
from difflab.serve.queue import Job, JobStore

log = logging.getLogger("difflab.serve")


# with batching, how long the worker may wait for the clients it just answered (see Worker._gather)
GATHER_FRACTION = 0.25  # of the batch that just ran: at most a quarter more latency for anyone
GATHER_MAX_S = 0.05  # and never more than this: a returning client takes a few milliseconds


class JobCancelled(Exception):
    """Raised inside the step callback to stop a job the client cancelled."""


class WorkerStopping(Exception):
    """Raised inside the step callback when the server shuts down: the job goes back to the queue."""


class Worker:
    def __init__(self, store: JobStore, images_dir: Path, cache=None, idle_wait_s: float = 1.0, *,
                 preview_every: int = 0, preview_max_side: int = 256, batch_max_images: int = 1,
                 housekeeping: Optional[Callable[[], Any]] = None, housekeeping_every_s: float = 600.0):
        from difflab.engine.pipeline import PipelineCache

        self.store = store
        self.images_dir = Path(images_dir)
        self.cache = cache if cache is not None else PipelineCache()
        self.idle_wait_s = idle_wait_s
        self.preview_every = preview_every  # 0: no previews
        self.preview_max_side = preview_max_side
        self.previews = PreviewBoard()  # the running job's latest preview, for the event stream
        self.batch_max_images = batch_max_images  # > 1: compatible queued jobs run as one call of up to this many
        self.current: Optional[Job] = None  # the job running now (for /sdapi/v1/progress)
        # housekeeping (serve.retention.sweep) runs here, between jobs: at start, then every housekeeping_every_s.
        # In this thread it can never delete what a job is writing, and it needs no lock of its own
        self.housekeeping = housekeeping
        self.housekeeping_every_s = housekeeping_every_s
        self._next_housekeeping = 0.0
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
            self._housekeep_if_due()
            jobs = self._claim()
            if not jobs:
                self.store.wait_for_change(self.idle_wait_s)
                continue
            self.current = jobs[0]
            started = time.monotonic()
            try:
                if len(jobs) == 1:
                    self.run_job(jobs[0])
                else:
                    self.run_merged_jobs(jobs)
            except Exception:  # never let one job kill the worker: the queue behind it would stall forever
                log.error("job(s) %s: unexpected error\n%s", ", ".join(job.id for job in jobs), traceback.format_exc())
                for job in jobs:
                    self.store.fail(job.id, "internal error (see the server log)")  # no-op for a finished job
            finally:
                self.current = None
                for job in jobs:
                    self.previews.drop(job.id)
            if self.batch_max_images > 1:
                self._gather(len(jobs), time.monotonic() - started)

    def _housekeep_if_due(self) -> None:
        if self.housekeeping is None or time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.housekeeping_every_s
        try:
            self.housekeeping()
        except Exception:  # a failed sweep must not stop the queue; it is tried again next time
            log.error("housekeeping failed\n%s", traceback.format_exc())

    def _gather(self, answered: int, seconds: float) -> None:
        """With batching, before the next claim: wait briefly for the clients just answered to send their next
        request, so that it joins the next batch. Synchronous clients come back within milliseconds, but without
        this wait the worker claims at once whatever is queued then, and 8 clients settle into batches of 1, 7,
        1, 7 (or 4, 4) instead of 8. Waits until ``answered`` more jobs are queued (never beyond a full batch),
        at most GATHER_FRACTION of the batch that just ran and GATHER_MAX_S; one client waits for nothing (its
        next job is the one it waits for), and a client that does not come back costs that bound once."""
        deadline = time.monotonic() + min(GATHER_MAX_S, GATHER_FRACTION * seconds)
        target = min(self.batch_max_images, self.store.queued() + answered)
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.store.queued() >= target:
                return
            self.store.wait_for_change(deadline - time.monotonic())

    def _claim(self) -> list[Job]:
        """The next job, or with batching the next run of compatible queued jobs (engine.merged.merge_key)."""
        if self.batch_max_images <= 1:
            job = self.store.claim_next()
            return [] if job is None else [job]
        from difflab.engine.merged import merge_key

        return self.store.claim_batch(merge_key, lambda request: int(request.get("n", 1)), self.batch_max_images)

    def run_job(self, job: Job) -> None:
        from difflab.engine.pipeline import run

        # 1. The request was validated when it was submitted; validate again because an input file may be gone.
        request = self._validated(job)
        if request is None:
            return

        # 2. Run it, reporting every step and stopping when asked.
        def on_step(done: int, total: int) -> None:
            if self.store.set_progress(job.id, done, total):
                raise JobCancelled
            if self._stop.is_set():
                raise WorkerStopping

        try:
            result = run(request, self.cache, on_step=on_step, previews=self._previews_for([job]))
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
        self._finish(job, result)

    def run_merged_jobs(self, jobs: list[Job]) -> None:
        """Compatible jobs as one pipeline call (engine.pipeline.run_merged). A job cancelled mid-call is marked
        cancelled at once and its images are dropped; the call stops only when every job in it is cancelled. If
        the call cannot be merged after all, or fails, each job runs alone and gets its own result or error."""
        from difflab.engine.pipeline import run_merged

        group = [(job, request) for job in jobs if (request := self._validated(job)) is not None]
        if len(group) < 2:
            for job, _ in group:
                self.run_job(job)
            return
        live = {job.id for job, _ in group}

        def on_step(done: int, total: int) -> None:
            for job_id in self.store.set_progress_many(sorted(live), done, total):
                self.store.mark_cancelled(job_id)
                live.discard(job_id)
            if not live:
                raise JobCancelled
            if self._stop.is_set():
                raise WorkerStopping

        try:
            results = run_merged([request for _, request in group], self.cache, on_step=on_step,
                                 previews=self._previews_for([job for job, _ in group], [r for _, r in group]))
        except JobCancelled:
            return
        except WorkerStopping:
            for job_id in live:
                self.store.requeue(job_id)
            return
        except Exception as error:  # NotMergeable, one request's bad input, anything: each job answers for itself
            log.info("jobs %s not run as one batch (%s: %s); running them one by one",
                     ", ".join(sorted(live)), type(error).__name__, error)
            for job, _ in group:
                if job.id in live:
                    self.run_job(job)
            return
        log.info("jobs %s ran as one batch of %d images", ", ".join(job.id for job, _ in group),
                 sum(len(result.images) for result in results))
        for (job, _), result in zip(group, results):
            if job.id in live:
                self._finish(job, result)

    def _validated(self, job: Job):
        """The job's GenerationRequest, or None after failing the job with the validation message."""
        from pydantic import ValidationError

        from difflab.engine.request import GenerationRequest, describe_validation_error

        try:
            return GenerationRequest.model_validate(job.request)
        except ValidationError as error:
            self.store.fail(job.id, describe_validation_error(error))
            return None

    def _finish(self, job: Job, result) -> None:
        """Write the PNGs (atomically, named by job id so a re-run after a crash replaces, never duplicates), then
        mark the job done: a job is 'done' only once its files exist."""
        from difflab.engine.outputs import save_result

        paths = save_result(result, self.images_dir, prefix=f"{job.id}-")
        images = [{"file": path.name, "seed": seed, "index": index}
                  for index, (path, seed) in enumerate(zip(paths, result.seeds))]
        self.store.finish(job.id, images)
        log.info("job %s done: %d image(s) in %.2f s", job.id, len(images), result.seconds)

    def _previews_for(self, jobs: list[Job], requests: Optional[list] = None):
        """What the engine should preview: each job's first image every ``preview_every`` steps, or None. For a
        merged call ``requests`` gives each job's place in it."""
        if not self.preview_every:
            return None
        from difflab.engine.progress import Previews

        from difflab.engine.merged import layout

        indices = (0,) if requests is None else tuple(place.first_image for place in layout(requests))

        def on_preview(done: int, images: list) -> None:
            for job, image in zip(jobs, images):
                self.previews.post(job.id, done, image)

        return Previews(every=self.preview_every, max_side=self.preview_max_side, indices=indices,
                        on_preview=on_preview)
