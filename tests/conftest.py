"""Shared fixtures: the real-data folder (../shared/data, skipped when absent) and one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DR_RAY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data (real fundus images, research-only). Tests using it skip when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (ray.init costs ~10 s on 2 cores).

    Jobs the tests start as subprocesses (``dr-ray <stage>``, ``jobs/<stage>.py``: kill-and-resume, the demo) join
    it through ``RAY_ADDRESS`` instead of starting a cluster each; fault injection reaches their workers through
    the job's runtime env (:func:`dr_ray.pipelines.runtime.init_ray`).
    """
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from dr_ray.pipelines.runtime import use_local_ray_train_settings

    use_local_ray_train_settings()  # the suite's many tiny Ray Train runs on one machine, as `dr-ray demo` runs them
    started = not ray.is_initialized()
    if started:
        # the dashboard serves the state API, through which Ray Train's PlacementGroupCleaner sees that a
        # killed controller (a trial stopped by ASHA, a job whose driver died) is gone and frees its CPUs
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # a 2.60 local cluster asks its clients for the token it wrote
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if started:
        ray.shutdown()
