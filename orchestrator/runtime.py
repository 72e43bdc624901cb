"""Connecting to Ray: a cluster (``--address`` / ``ray job submit``) or a local one."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_path() -> str | None:
    """Ray's bundled jemalloc, if this Ray build ships it."""
    import ray

    path = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return str(path) if path.exists() else None


def worker_env(jemalloc: bool) -> dict:
    """Environment for trial workers. jemalloc with decay off keeps freed pages mapped, which
    removes most page-fault time of CPU training under glibc malloc (benchmarks/jemalloc.py)."""
    env = {"PYTHONUNBUFFERED": "1"}
    if jemalloc:
        lib = jemalloc_path()
        if lib:
            env.update({"LD_PRELOAD": lib, "MALLOC_CONF": JEMALLOC_CONF})
    return env


@contextmanager
def ray_session(address: str | None = None, jemalloc: bool = False, num_cpus: int | None = None):
    """Use the Ray already running in this process, else connect/start one; shut down only
    what we started. ``address`` or ``RAY_ADDRESS`` (set by ``ray job submit``) joins a
    cluster (``auto`` = the one ``ray start`` left on this machine); otherwise a fresh local
    Ray uses this machine. We never fall back to Ray's own "latest cluster" lookup, since a
    killed driver can leave a stale address behind that would then be joined."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs = {"runtime_env": {"env_vars": worker_env(jemalloc)}, "log_to_driver": True}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
