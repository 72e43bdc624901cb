"""Shared fixtures: one local Ray (num_cpus=2, 127.0.0.1) for the whole test run, with a leak guard.

Starting Ray costs a few seconds and its first trials re-import torch in fresh workers, so the
``ray`` tier shares one session instead of one per module. Sharing is safe only while no test
leaves resources held: after every test that used it, :func:`ray_local` waits for all CPUs to be
free again and restarts Ray where they are not. The leak it guards against is real: Ray 2.60 can
keep the CPU of a placement group removed while its bundle was being prepared
(ray-project/ray#64693, fix unreleased); Tune removes such groups when it reuses an actor, and a
later 2-CPU trial then waits forever for the lost quarter CPU. Tests that start a Ray of their own
(other settings, a multi-node cluster) call :func:`release_shared_ray` first.
"""
import os
import time
import warnings

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

NUM_CPUS = 2
# How long the guard waits for a finished test's trials to hand their CPUs back (Tune stops its
# actors as the experiment ends; Ray frees their resources a moment later).
RELEASE_WAIT_S = 20.0
# Restarts the guard made in this run: reported at the end, and a test checks the guard itself.
restarts: list[str] = []


def _start():
    import ray

    # address="local": never join a stale cluster that a killed test driver left behind
    ray.init(address="local", num_cpus=NUM_CPUS, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, configure_logging=False)


def release_shared_ray() -> None:
    """Shut the shared Ray down (if running) so a test can start one with settings of its own; the
    next test that asks for :func:`ray_local` starts a fresh one."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def held_cpus(ray) -> float:
    """CPUs of the shared Ray that something still holds."""
    return NUM_CPUS - ray.available_resources().get("CPU", 0.0)


def leak_guard(ray, test: str, wait_s: float = RELEASE_WAIT_S) -> bool:
    """True when every CPU is free within ``wait_s``; else shut Ray down (the next test starts a
    fresh one), record ``test`` in :data:`restarts` and warn, so a leak is seen and cannot starve
    later tests. Also true when the test itself shut Ray down."""
    if not ray.is_initialized():
        return True
    deadline = time.monotonic() + wait_s
    while held_cpus(ray) > 1e-9:
        if time.monotonic() > deadline:
            held = held_cpus(ray)
            restarts.append(test)
            warnings.warn(f"ray leak guard: {held:g} CPU still held after {test}; restarting Ray", stacklevel=1)
            ray.shutdown()
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def ray_local(request):
    """The run's shared local Ray, started on first use (and again after a release or a leak)."""
    import ray

    if not ray.is_initialized():
        _start()
    yield ray
    leak_guard(ray, request.node.nodeid)


def pytest_collection_modifyitems(config, items):
    """Every test that uses a local Ray is in the `ray` tier (the fast tier runs without Ray)."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


def pytest_sessionfinish(session, exitstatus):
    """Shut the shared Ray down once, at the end of the run."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if restarts:
        terminalreporter.write_line(f"ray leak guard restarted Ray after {len(restarts)} test(s): {restarts}")
