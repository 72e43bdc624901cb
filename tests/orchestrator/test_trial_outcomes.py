"""What the searches read of a Tune ResultGrid (:func:`orchestrator.search.trial_outcomes`) and the
TuneConfig defaults every experiment gets (:func:`orchestrator.search.tune_defaults`), without Ray."""
from types import SimpleNamespace

from medcore.records import FAILED, OK, OUT_OF_MEMORY
from orchestrator.search import RunContext, TrialOutcome, trial_outcomes, tune_defaults


def _result(name, config=None, metrics=None, error=None, checkpoint=None):
    return SimpleNamespace(config=config, metrics=metrics, error=error, checkpoint=checkpoint,
                           path=f"/runs/exp/{name}", metrics_dataframe=None)


OK_RUN = _result("cand0000_abc12_00000", config={"architecture": {"n": 1}},
                 metrics={"trial_id": "abc12_00000", "val_auc": 0.8, "status": OK}, checkpoint="ckpt")
ERRORED = _result("cand0001_abc12_00001", config={"architecture": {"n": 2}},
                  error=RuntimeError("Traceback ...\nValueError: the loss went NaN"))
# restored on resume: an errored trial keeps no config and never reported
UNCONFIGURED = _result("cand0002_abc12_00002", config={}, error=RuntimeError("OutOfMemoryError: killed"))
GRID = [OK_RUN, ERRORED, UNCONFIGURED]


def test_each_result_becomes_one_typed_outcome_in_grid_order():
    ok, errored, unconfigured = trial_outcomes(GRID)
    assert ok == TrialOutcome(trial_id="abc12_00000", config={"architecture": {"n": 1}},
                              metrics={"trial_id": "abc12_00000", "val_auc": 0.8, "status": OK}, status=OK,
                              reason="", checkpoint="ckpt")
    assert not ok.failed and ok.report() == ok.metrics and ok.report() is not ok.metrics
    # the id of a trial that never reported comes from its folder; the reason is the error's last line
    assert (errored.trial_id, errored.status, errored.reason, errored.metrics) == (
        "abc12_00001", FAILED, "ValueError: the loss went NaN", {})
    assert errored.failed and errored.report() == {"status": FAILED, "reason": "ValueError: the loss went NaN"}
    assert (unconfigured.trial_id, unconfigured.config, unconfigured.reason) == ("abc12_00002", {}, OUT_OF_MEMORY)


def test_configured_only_leaves_out_errored_trials_restored_without_config():
    assert [o.trial_id for o in trial_outcomes(GRID, configured_only=True)] == ["abc12_00000", "abc12_00001"]
    assert RunContext.outcomes(GRID, configured_only=True) == trial_outcomes(GRID, configured_only=True)


def test_outcomes_copy_what_they_read():
    ok = trial_outcomes([OK_RUN])[0]
    ok.metrics["val_auc"], ok.config["extra"] = 0.0, 1
    assert OK_RUN.metrics["val_auc"] == 0.8 and "extra" not in OK_RUN.config


def test_tune_defaults_fill_what_the_caller_left_unset():
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, Searcher

    from orchestrator.search import trial_name

    filled = tune_defaults(tune.TuneConfig(num_samples=3), max_concurrent=4)
    assert (filled.max_concurrent_trials, filled.reuse_actors, filled.num_samples) == (4, True, 3)
    assert filled.trial_name_creator is trial_name and filled.trial_dirname_creator is trial_name
    assert tune_defaults(tune.TuneConfig(), max_concurrent=0).max_concurrent_trials is None  # 0: as many as fit
    assert tune_defaults(tune.TuneConfig(max_concurrent_trials=1), max_concurrent=4).max_concurrent_trials == 1
    assert tune_defaults(tune.TuneConfig(), 4, reuse_actors=False).reuse_actors is False
    # Tune refuses a second limit on a ConcurrencyLimiter with another value
    limited = tune.TuneConfig(search_alg=ConcurrencyLimiter(Searcher(metric="m", mode="max"), max_concurrent=2))
    assert tune_defaults(limited, max_concurrent=4).max_concurrent_trials is None
    names = tune.TuneConfig(trial_name_creator=str)
    assert tune_defaults(names, 4).trial_name_creator is str
