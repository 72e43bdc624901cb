"""For tests of what a search's stages ask Tune for, without running Tune."""
from __future__ import annotations


class Stop(Exception):
    """Raised in place of running an experiment: the call has been recorded."""


def capture_run_tuner(ctx, monkeypatch) -> list:
    """Record ``(name, kwargs)`` of every ``ctx.run_tuner`` call (each raises :class:`Stop`), with
    ``tune.with_parameters`` passing the trainable through (no object store)."""
    calls = []

    def run_tuner(name, trainable, **kw):
        calls.append((name, kw))
        raise Stop

    monkeypatch.setattr(ctx, "run_tuner", run_tuner)
    monkeypatch.setattr("ray.tune.with_parameters", lambda trainable, **kw: trainable)
    return calls
