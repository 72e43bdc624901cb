"""Shared fixtures: one local Ray (num_cpus=2) for the whole session, always shut down."""
import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # address="local": never join a stale cluster that a killed test driver left behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    try:
        yield ray
    finally:
        ray.shutdown()
