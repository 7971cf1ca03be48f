"""Task events settings on a real cluster: the GCS's cap evicts the oldest tasks and
says so; an interval of 0 turns recording off in every process."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.util import state


@ray.remote
def noop(i: int) -> int:
    return i


@ray.remote
def recording() -> bool:
    from aioray._private.owner import worker_context

    cw = worker_context.core_worker
    return cw is not None and cw.task_events is not None


CAPPED = {
    "_system_config": {"task_events_max_num_task_in_gcs": 10, "task_events_report_interval_ms": 50}
}


@pytest.mark.parametrize("ray_start", [CAPPED], indirect=True)
def test_tasks_past_the_cap_are_evicted_and_counted(ray_start: Any) -> None:
    ray.get([noop.remote(i) for i in range(30)])

    def evicted() -> Any:
        answer = state.list_tasks(limit=100, raise_on_missing_output=False)
        finished = [t for t in answer if t.state == "FINISHED"]
        summary = state.summarize_tasks()["cluster"]
        return summary if len(finished) == 10 and summary["num_tasks_evicted"] == 20 else None

    summary = wait_for_condition(evicted, 20)
    assert summary["total_tasks"] == 10
    with pytest.raises(state.RayStateApiException, match="evicted from the GCS"):
        state.list_tasks()  # raise_on_missing_output=True: Ray raises on missing rows


@pytest.mark.parametrize(
    "ray_start", [{"_system_config": {"task_events_report_interval_ms": 0}}], indirect=True
)
def test_interval_zero_turns_events_off_everywhere(ray_start: Any) -> None:
    from aioray._private.owner import worker_context

    cw = worker_context.core_worker
    assert cw is not None and cw.task_events is None
    assert ray.get(recording.remote()) is False
    assert state.list_tasks() == []
