"""The strategy search under a real Tuner: ASHA stops poor trials (Optuna sees them pruned),
NSGA-II over two objectives, resume loses and repeats nothing, and a tiny search end to end."""
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from medcore.records import OK
from orchestrator.config import Resources, StrategyFitOptions, StrategySearchConfig
from orchestrator.search import TRIAL_RETRIES
from orchestrator.searches.strategy import final_study, make_searcher, objective_setup, optuna_space, trial_numbers
from tests.figures import capture
from trainables.strategy import parse_space

# Only the learning rate varies (three choices): its value decides how good a curve is.
LR_SPACE = {k: [v] for k, v in {"init": "default", "norm": "keep", "dropout": 0.0, "l1": 0.0, "l2": 0.0,
                                "optimizer": "adam", "schedule": "none", "batch_size": 128,
                                "augment": "none"}.items()} | {"lr": [0.001, 0.01, 0.03]}
QUALITY = {0.001: 0.5, 0.01: 0.8, 0.03: 0.2}


def curve_trainable(config, log: str, epochs: int, sleep: float = 0.0):
    """A stand-in trial: val_acc rises from QUALITY[lr] by 0.01 per epoch; rows as the real trial's."""
    from ray import tune

    start = tune.get_checkpoint()
    first = 1 if start is None else json.loads(Path(start.path, "epoch.json").read_text())["epoch"] + 1
    with open(log, "a") as f:
        f.write(json.dumps({"trial": tune.get_context().get_trial_id(), "lr": config["lr"], "first": first}) + "\n")
    for epoch in range(first, epochs + 1):
        time.sleep(sleep)
        acc = QUALITY[config["lr"]] + 0.01 * epoch
        row = {"epoch": epoch, "val_acc": acc, "best_val_acc": acc, "val_acc@2": QUALITY[config["lr"]] + 0.02,
               "val_acc@final": acc + (0.3 if config["lr"] == 0.03 else 0.0), "finished": epoch == epochs}
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            Path(d, "epoch.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))


def _cfg(tmp_path, **kw):
    return StrategySearchConfig(out=str(tmp_path), space=json.dumps(LR_SPACE), **kw).validate()


def _tuner(tmp_path, cfg, searcher, scheduler, epochs, callbacks=None, sleep=0.0):
    from ray import tune

    trainable = tune.with_parameters(curve_trainable, log=str(tmp_path / "log.jsonl"), epochs=epochs, sleep=sleep)
    return tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                              num_samples=cfg.budget, max_concurrent_trials=1,
                                                              reuse_actors=True),
                      run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "tune"), callbacks=callbacks,
                                                failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                                verbose=0))


def _storage(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _stored_searcher(tmp_path, cfg):
    """A searcher whose study lives in an Optuna storage (as with --optuna-storage)."""
    return make_searcher(cfg, parse_space(cfg.space), _storage(tmp_path), study_name="strategy")


def _stored_study(tmp_path):
    """The study as the search reads it after the run: from its storage."""
    return final_study(None, _storage(tmp_path), "strategy")


def _restored_study(tmp_path, cfg):
    """A study without storage: the searcher's, restored from the state Tune saved (run_tuner)."""
    searcher = make_searcher(cfg, parse_space(cfg.space))
    searcher.restore_from_dir(str(tmp_path / "tune" / "exp"))
    return final_study(searcher, None, "strategy")


def test_asha_stops_poor_trials_and_optuna_sees_them_pruned(ray_local, tmp_path):
    from optuna.trial import TrialState
    from ray.tune.schedulers import ASHAScheduler

    cfg = _cfg(tmp_path, budget=8, fit=StrategyFitOptions(max_epochs=9))
    searcher = _stored_searcher(tmp_path, cfg)
    asha = ASHAScheduler(time_attr="epoch", metric="best_val_acc", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3)
    grid = _tuner(tmp_path, cfg, searcher, asha, epochs=9).fit()
    epochs = {r.metrics["trial_id"]: (r.config["lr"], r.metrics["epoch"]) for r in grid}
    assert len(epochs) == 8
    study = _stored_study(tmp_path)
    assert set(trial_numbers(study)) == set(epochs)  # every Tune trial named in the study
    states = {t.number: (t.params["lr"], t.state) for t in study.trials}
    pruned = [lr for lr, s in states.values() if s == TrialState.PRUNED]
    complete = [lr for lr, s in states.values() if s == TrialState.COMPLETE]
    # poor learning rates were stopped early and told to Optuna as pruned; the best ran all epochs
    assert pruned and 0.03 in pruned and 0.01 in complete
    assert sum(e for _, e in epochs.values()) < 8 * 9
    assert all(e == 9 for lr, e in epochs.values() if lr == 0.01)
    assert study.best_trial.params["lr"] == 0.01 and study.trials[0].params["lr"] == 0.001  # the default first


def test_nsga2_over_two_objectives_with_fifo(ray_local, tmp_path):
    from optuna.trial import TrialState
    from ray.tune.schedulers import FIFOScheduler

    cfg = _cfg(tmp_path, budget=4, objectives="val_acc@2,val_acc@final", fit=StrategyFitOptions(max_epochs=3))
    searcher = _stored_searcher(tmp_path, cfg)
    grid = _tuner(tmp_path, cfg, searcher, FIFOScheduler(), epochs=3).fit()
    assert len(grid) == 4 and all(r.metrics["epoch"] == 3 for r in grid)
    assert type(searcher.study.sampler).__name__ == "NSGAIISampler"  # what sampled (a loaded study has TPE's default)
    study = _stored_study(tmp_path)
    assert len(study.directions) == 2
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    front = {t.params["lr"] for t in study.best_trials}
    # lr 0.01 is best early, 0.03 best at the end: both on the front, 0.001 dominated by 0.01
    assert 0.001 not in front and front <= {0.01, 0.03} and front


BUDGET = 8


def test_resume_loses_and_repeats_nothing(ray_local, tmp_path):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    flag = tmp_path / "crash-now"
    flag.write_text("")

    class CrashAfterThree(tune.Callback):
        """The driver dies (an exception out of ``fit``) after three finished trials while
        ``flag`` exists, the way a killed driver leaves its last saved state; after it is
        removed the restored run goes on."""

        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1

        def on_step_end(self, iteration, trials, **info):  # outside Tune's per-trial error handling
            # die once Tune has saved its state (every TUNE_GLOBAL_CHECKPOINT_S = 2 s) after the third
            if flag.exists() and self.done >= 3:
                self.since = getattr(self, "since", None) or time.time()
                if time.time() - self.since > 5:
                    raise RuntimeError("driver killed")

    cfg = _cfg(tmp_path, budget=BUDGET, fit=StrategyFitOptions(max_epochs=2))
    searcher = make_searcher(cfg, parse_space(cfg.space))
    with pytest.raises(Exception, match="driver killed"):
        _tuner(tmp_path, cfg, searcher, FIFOScheduler(), epochs=2, callbacks=[CrashAfterThree()], sleep=0.5).fit()
    started_before_crash = {json.loads(line)["trial"] for line in (tmp_path / "log.jsonl").read_text().splitlines()}
    saved = _restored_study(tmp_path, cfg)
    before = {t.number: (t.params, t.state.name, t.values) for t in saved.trials}
    number_of = trial_numbers(saved)
    finished_before = {n for n, (_, s, _) in before.items() if s == "COMPLETE"}
    assert 3 <= len(finished_before) < BUDGET
    flag.unlink()
    path = str(tmp_path / "tune" / "exp")
    assert tune.Tuner.can_restore(path)
    trainable = tune.with_parameters(curve_trainable, log=str(tmp_path / "log.jsonl"), epochs=2, sleep=0.5)
    grid = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True).fit()
    study = _restored_study(tmp_path, cfg)
    assert len(grid) == BUDGET and len({r.metrics["trial_id"] for r in grid}) == BUDGET
    assert sorted(t.number for t in study.trials) == list(range(BUDGET))  # nothing lost, no trial asked twice
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    for n in finished_before:  # finished trials kept their strategy and value
        assert (study.trials[n].params, study.trials[n].values) == (before[n][0], before[n][2])
    starts = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    fresh = [s["trial"] for s in starts if s["first"] == 1]
    assert {r.metrics["trial_id"] for r in grid} <= set(fresh)
    # trials finished in the saved state never trained again; only trials started before the crash
    # but not finished in Tune's last saved state (which the study follows) may train once more
    saved_done = {tid for tid, n in number_of.items() if n in finished_before}
    assert all(fresh.count(tid) == 1 for tid in saved_done)
    unsaved = started_before_crash - saved_done
    assert all(fresh.count(tid) <= 2 and (fresh.count(tid) == 1 or tid in unsaved) for tid in set(fresh))
    assert len(fresh) - BUDGET <= len(unsaved) < BUDGET


def test_tiny_strategy_search_end_to_end(ray_local, tmp_path, monkeypatch):
    """Synthetic data (labelled so): 3 strategies of a tiny CNN, 2 epochs; outputs, zoo, SQLite study."""
    from orchestrator.data import load_medmnist, make_synthetic
    from orchestrator.driver import run_search
    from orchestrator.zoo import read_zoo

    figures = capture(monkeypatch)
    root = tmp_path / "data"
    make_synthetic("breastmnist", root, 28, (48, 16, 16))
    data = load_medmnist("breastmnist", 28, root)
    cfg = StrategySearchConfig(dataset="breastmnist", data_root=str(root), out=str(tmp_path / "run"), budget=3,
                               fit=StrategyFitOptions(max_epochs=2), grace_period=1, optuna_storage=True,
                               space='{"batch_size": [16, 32]}', resources=Resources(max_concurrent=2))
    s = run_search("strategy", cfg, data)
    out = tmp_path / "run"
    assert s["search"] == "strategy" and s["dataset"] == "breastmnist" and s["synthetic"] is True
    assert s["n_evaluated"] == 3 and s["sampler"] == "TPE" and s["scheduler"] == "ASHA"
    best = s["best"]
    assert set(best["strategy"]) >= {"init", "norm", "dropout", "l1", "l2", "optimizer", "lr", "augment"}
    assert 0 <= best["val_acc"] <= 1 and 0 <= best["test_acc"] <= 1 and 0 <= best["test_auc"] <= 1
    assert s["default"]["retrained"]["test_auc"] is not None
    trials, curves = pd.read_csv(out / "trials.csv"), pd.read_csv(out / "curves.csv")
    assert len(trials) == 3 and trials.synthetic.all() and set(curves.trial_id) == set(trials.trial_id)
    # the learning curves are the trials' curves: each drawn line is one trial's, every trial drawn
    assert (out / "learning_curves.png").is_file()
    [plot] = figures["learning_curves.png"]
    metric = cfg.fit.metric
    assert plot["ylabel"] == metric
    expected = {tid: tuple(zip(c.epoch.astype(float), c[metric].astype(float)))
                for tid, c in curves.groupby("trial_id")}
    drawn = {tuple(map(tuple, xy.tolist())) for _, xy in plot["lines"]}
    assert drawn == set(expected.values()) and len(expected) == 3
    labels = [label for label, _ in plot["lines"]]
    assert any(label.startswith("#") for label in labels)  # the best strategies named
    assert any(label.startswith("default recipe (#") for label in labels) == bool(trials.default_recipe.any())
    zoo = read_zoo(out / "zoo")
    assert len(zoo[zoo.stage == "search"]) == 3 and zoo[zoo.stage == "retrain-best"].weights.notna().all()
    assert zoo.synthetic.all()
    import optuna

    study = optuna.load_study(study_name=s["study_name"], storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 3
    assert trial_numbers(study) == dict(zip(trials.trial_id, trials.optuna_number))  # rows matched by Tune id
    # the best model from the zoo rebuilds and takes its weights
    from orchestrator.export import build_model, read_state_dict

    row = zoo[zoo.stage == "retrain-best"].iloc[0]
    build_model(json.loads(row.build)).load_state_dict(read_state_dict(row.weights))
    assert all(r == OK for r in trials.status)


def test_network_from_the_zoo_with_its_weights_and_bad_ids(tmp_path):
    """--from-zoo ID: the zoo row's build recipe and weights become the network and `pretrained`."""
    import torch

    from medcore.errors import ConfigError
    from medcore.records import ModelRecord
    from orchestrator import zoo
    from orchestrator.data import load_sample
    from orchestrator.search import RunContext
    from orchestrator.searches.strategy import StrategySearch
    from trainables.strategy_trial import call_builder, network_build

    data = load_sample()
    info = data.info
    build = network_build("tiny_cnn", info)
    source = call_builder(build)
    (tmp_path / "w").mkdir()
    torch.save(source.state_dict(), tmp_path / "w" / "model.pt")
    rows = zoo.rows_from_records([ModelRecord(search="ode", stage="retrain", family="tiny", architecture={"x": 1},
                                              encoding=[], status=OK, build=build, weights=str(tmp_path / "w"))],
                                 dataset=info.flag, size=info.size, spatial_dims=info.spatial_dims, task=info.task,
                                 input_shape=list(info.input_shape), run="r", synthetic=False)
    zoo.write_rows(tmp_path / "zoo", rows, writer_id="w1")
    model_id = rows[0]["model_id"]
    cfg = StrategySearchConfig(dataset=info.flag, out=str(tmp_path / "run"), zoo=str(tmp_path / "zoo"),
                               from_zoo=model_id, space='{"init": ["pretrained", "default"]}').validate()
    search = StrategySearch()
    net, state, described = search._network(RunContext(search=search, cfg=cfg, data=data, run_id="t"))
    assert net == build and described["from_zoo"] == model_id
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    bad = StrategySearchConfig(dataset=info.flag, out=str(tmp_path / "run"), zoo=str(tmp_path / "zoo"),
                               from_zoo="0123456789abcdef").validate()
    with pytest.raises(ConfigError, match="not found in zoo"):
        search._network(RunContext(search=search, cfg=bad, data=data, run_id="t"))


def test_cli_refuses_bad_input_in_one_line(capsys, tmp_path):
    from orchestrator.cli import main

    assert main(["search", "strategy", "--dataset", "breastmnist", "--out", str(tmp_path),
                 "--space", '{"init": ["he_normal"]}']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: --space: unknown init 'he_normal'") and "\n" not in err


def test_metaspace_recommendation_becomes_the_pretrained_network(tmp_path, monkeypatch):
    """--metaspace DIR: the top model of ``MetaSpace.query_images`` (another dataset's, 3 classes)
    is rebuilt with this dataset's single output; its weights load except the classifier."""
    import torch

    from orchestrator import metaspace
    from orchestrator.data import load_sample
    from orchestrator.search import RunContext
    from orchestrator.searches.strategy import StrategySearch
    from trainables.strategy import Strategy
    from trainables.strategy_trial import call_builder

    data = load_sample()
    other = {"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": {"in_channels": 1, "n_outputs": 3,
                                                                       "spatial_dims": 3}}
    source = call_builder(other)
    (tmp_path / "w").mkdir()
    torch.save(source.state_dict(), tmp_path / "w" / "model.pt")
    asked = {}

    class Recommender:  # the query's answer for this test; the query itself is the meta-space's own tests'
        def query_images(self, images, top_k):
            asked.update(shape=images.shape, top_k=top_k)
            return pd.DataFrame([{"model_id": "m1", "dataset": "organmnist3d", "family": "tiny",
                                  "architecture": "{}", "build": json.dumps(other), "weights": str(tmp_path / "w"),
                                  "score": 0.9}])

    monkeypatch.setattr(metaspace.MetaSpace, "load", classmethod(lambda cls, folder: Recommender()))
    (tmp_path / "ms").mkdir()
    cfg = StrategySearchConfig(dataset="adrenalmnist3d", out=str(tmp_path / "run"), metaspace=str(tmp_path / "ms"),
                               space='{"init": ["pretrained"]}').validate()
    search = StrategySearch()
    net, state, described = search._network(RunContext(search=search, cfg=cfg, data=data, run_id="t"))
    assert asked == {"shape": data.images["train"].shape, "top_k": 1}
    assert net["kwargs"]["n_outputs"] == 1 and described["recommended"] == "m1"
    assert "head.weight" not in state and torch.equal(state["features.0.weight"], source.features[0].weight)
    model = Strategy(init="pretrained", dropout=0.2).apply_structure(call_builder(net), 3, pretrained=state)
    assert torch.equal(model.features[0].weight, source.features[0].weight) and model.head[1].out_features == 1


def test_the_nsga2_searcher_pickles_as_tune_saves_it(tmp_path):
    """Optuna 5's NSGA-II sampler holds a bare lock; Tune pickles the searcher (Tuner state,
    save/restore), so the searcher must survive plain pickle and keep sampling after it."""
    import pickle

    cfg = _cfg(tmp_path, budget=4, objectives="val_acc@2,val_acc@final", fit=StrategyFitOptions(max_epochs=3))
    searcher = make_searcher(cfg, parse_space(cfg.space))
    searcher.set_search_properties(None, None, {})
    searcher.save(str(tmp_path / "s.pkl"))
    again = make_searcher(cfg, parse_space(cfg.space))
    again.restore(str(tmp_path / "s.pkl"))
    assert again.suggest("t1")["lr"] in LR_SPACE["lr"]
    with pickle.loads(pickle.dumps(again._sampler))._thread_lock:  # a working, unlocked lock
        pass


def test_the_study_names_its_tune_trials_with_or_without_storage(tmp_path):
    """Each study trial records its Tune trial id when the searcher asks for it, so the study read
    after the run (from its storage, or the searcher's own as Tune saved and restores it) maps Tune
    trials to Optuna numbers; a trial the scheduler stopped is PRUNED there, a finished one COMPLETE."""
    cfg = _cfg(tmp_path, budget=4, fit=StrategyFitOptions(max_epochs=3))
    [metric], _ = objective_setup(cfg)
    for storage in (_storage(tmp_path), None):
        searcher = make_searcher(cfg, parse_space(cfg.space), storage, study_name="strategy")
        first, second = searcher.suggest("a"), searcher.suggest("b")
        assert searcher.suggest("a") == first and first["lr"] == 0.001  # asked again: the same (default) trial
        searcher.on_trial_complete("a", {metric: 0.6, "finished": True})
        searcher.on_trial_complete("b", {metric: 0.3, "finished": False})
        if storage is None:  # as run_tuner leaves it: restored from the state Tune saved
            searcher.save(str(tmp_path / "searcher.pkl"))
            searcher = make_searcher(cfg, parse_space(cfg.space))
            searcher.restore(str(tmp_path / "searcher.pkl"))
        study = final_study(searcher, storage, "strategy")
        assert trial_numbers(study) == {"a": 0, "b": 1}
        assert [(t.state.name, t.values, t.params["lr"]) for t in study.trials] == [
            ("COMPLETE", [0.6], 0.001), ("PRUNED", None, second["lr"])]


def test_the_space_reaches_optuna_as_the_distributions_it_names():
    """The parsed space goes through Tune's domains and OptunaSearch's converter: each choice a
    categorical, each range a float distribution with its bounds, log scale and step, in order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = parse_space({"dropout": {"low": 0.1, "high": 0.4}, "l2": {"low": 1e-6, "high": 1e-2, "log": True},
                         "batch_size": [16, 32]})
    expected = {name: CategoricalDistribution(list(spec[1])) if spec[0] == "choice" else
                FloatDistribution(spec[1], spec[2], log=spec[3], step=spec[4]) for name, spec in space.items()}
    assert list(optuna_space(space).items()) == list(expected.items())
    assert optuna_space(parse_space())["dropout"] == FloatDistribution(0.0, 0.5, step=0.1)
