"""Tune's part played in-process for the compression searchers: no Ray start-up.

Used by the searcher tests and by the benchmarks that drive the same searchers
``medtune search compress`` builds (``benchmarks/ctaea_hypervolume.py``,
``benchmarks/compress_retina.py hv``) through their ``suggest``/``on_trial_complete`` API.
"""
from __future__ import annotations

import numpy as np
from ray.tune.search import Searcher

from searchers.ctaea import CompressionBatchSearcher


def drive_without_ray(searcher: CompressionBatchSearcher, evaluate, max_trials: int | None = None,
                      completion_rng: np.random.Generator | None = None,
                      trial_prefix: str = "trial") -> int:
    """Play Tune's part in-process: suggest until ``None``/``FINISHED``, evaluate, complete.

    ``evaluate(config) -> result dict`` (an exception counts as a trial error). Trials of a
    batch complete in suggestion order, or shuffled by ``completion_rng`` (to exercise
    completion-order independence). Stops after ``max_trials`` suggestions if given
    (leaving the last batch possibly running, as an interrupted experiment would).
    Returns the number of trials suggested.
    """
    n = 0
    while True:
        running: list[tuple[str, dict]] = []
        while max_trials is None or n < max_trials:
            trial_id = f"{trial_prefix}_{searcher.seed}_{searcher._n_suggested:05d}"
            config = searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                break
            running.append((trial_id, config))
            n += 1
        if not running:
            return n
        if max_trials is not None and n >= max_trials:
            # Interrupted: the running trials never report (as if the driver died).
            return n
        order = list(range(len(running)))
        if completion_rng is not None:
            completion_rng.shuffle(order)
        for i in order:
            trial_id, config = running[i]
            try:
                result, error = evaluate(config), False
            except Exception:  # noqa: BLE001 - a crashing trainable is a failed trial
                result, error = None, True
            searcher.on_trial_complete(trial_id, result=result, error=error)
