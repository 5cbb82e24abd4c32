"""A synchronous request is answered the moment its job ends (serve.waiters), not at the queue's next poll."""

from __future__ import annotations

import statistics
import time

from tests.serve.conftest import SMALL


def test_sync_request_answers_right_after_its_job_finishes(client) -> None:
    """Under the old 50 ms poll the lag from the job's end to the answer was uniform in [0, 50] ms (median about
    25 ms); woken by the store it is the time to write and send the response."""
    client.post("/v1/generate", json={"prompt": "warm up", **SMALL, "steps": 1})  # the pipeline loads once
    lags = []
    for seed in range(7):
        response = client.post("/v1/generate", json={"prompt": "a red circle", **SMALL, "steps": 1, "seed": seed})
        answered = time.time()
        assert response.status_code == 200, response.text
        lags.append(answered - response.json()["finished"])
    assert statistics.median(lags) < 0.012, [round(lag * 1000, 1) for lag in lags]
