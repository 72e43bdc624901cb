"""Starting or resuming one Tune experiment under a run's storage path.

Every search is resumable: Tune keeps experiment and searcher state in
``<storage>/<name>``; ``--resume`` continues it, and without ``--resume`` an existing
experiment is never overwritten.
"""
from __future__ import annotations

import os
from pathlib import Path

from orchestrator.config import RunOptions
from orchestrator.errors import MedtuneError

# Save experiment + searcher state at least every few seconds, so a killed driver loses
# at most the trials that were still running (those re-run on resume).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# Ctrl+C stops the driver at once (KeyboardInterrupt; the CLI says how to resume). Tune's own
# handler would instead end the experiment as if it had finished, and the driver would go on
# to retrain and summarise a half-done search. The state saved every 2 s is what resume uses.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def experiment_path(opts: RunOptions, name: str) -> str:
    return str(Path(opts.storage_path) / name)


def run_experiment(name: str, trainable, opts: RunOptions, tune_config=None, param_space=None,
                   verbose: int = 1):
    """Fit a new experiment, or restore and finish an existing one when ``opts.resume``."""
    from ray import tune

    path = experiment_path(opts, name)
    if tune.Tuner.can_restore(path):
        if not opts.resume:
            raise MedtuneError(f"an experiment already exists at {path}; pass --resume to continue it "
                               f"or choose another --out/--storage")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=tune_config,
            run_config=tune.RunConfig(name=name, storage_path=opts.storage_path, verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    return tuner.fit(), path


def trial_resources(opts: RunOptions) -> dict:
    res = {"cpu": opts.cpus_per_trial}
    if opts.gpus_per_trial:
        res["gpu"] = opts.gpus_per_trial
    return res


def require_finished(searcher, name: str, opts: RunOptions) -> None:
    """Refuse to report on a search that stopped early (Tune also ends a run on SIGUSR1)."""
    if not searcher.is_finished:
        raise MedtuneError(f"the {name} experiment stopped before its searcher finished; everything "
                           f"evaluated is saved in {experiment_path(opts, name)}; rerun with --resume")
