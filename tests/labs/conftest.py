"""Lab notebooks run only when asked for (``-m labs``): each takes minutes, the default suite must stay fast.

They are deselected, not skipped, so the default run's summary is not six lines of "skipped"; CI runs them as
their own step (``.ci/run``: ``scripts/test.sh -m labs``).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "labs" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("labs") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("labs") is not None])
        items[:] = kept
