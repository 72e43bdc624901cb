"""``--fidelity multi`` of the ODE search on the shipped real sample: rungs in summary.json,
candidates stopped at low rungs in their one trial (never retrained), learning curves in the
zoo, and a resumed run that repeats nothing."""
import json

import pytest

from orchestrator.config import FitOptions, ODESearchConfig
from orchestrator.data import SAMPLE_ROOT
from orchestrator.driver import run_search
from orchestrator.zoo import metrics_of, read_zoo


def _cfg(out, **kw):
    return ODESearchConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(out), budget=8, pop_size=4,
                           fraction=0.2, max_gflops=0.02, top_k=1, retrain_epochs=1, seed=0, fidelity="multi",
                           min_epochs=1, eta=2, fit=FitOptions(max_epochs=4, patience=4, metric="val_auc"), **kw)


def test_min_epochs_must_be_below_the_full_budget():
    from medcore.errors import ConfigError

    with pytest.raises(ConfigError, match="min_epochs"):
        ODESearchConfig(fidelity="multi", min_epochs=5, fit=FitOptions(max_epochs=5)).validate()
    ODESearchConfig(fidelity="paper", min_epochs=5, fit=FitOptions(max_epochs=5)).validate()  # unused there


def test_multi_fidelity_search_end_to_end_and_resume(ray_local, tmp_path):
    summary = run_search("ode", _cfg(tmp_path))
    assert summary["fidelity"] == "multi"
    rungs = summary["rungs"]
    assert [r["epochs"] for r in rungs] == [1, 2, 4]
    counts = [r["candidates"] for r in rungs]
    assert counts[0] == summary["n_ok"] > counts[-1] >= 1 and counts == sorted(counts, reverse=True)
    assert summary["epochs_trained"] < summary["n_ok"] * 4
    assert summary["pick"] and 0 <= summary["pick"]["test_auc"] <= 1

    # one Tune trial per candidate: a continuing candidate trained on in its trial
    trials = [p for p in (tmp_path / "tune" / "ode_search").iterdir() if p.is_dir()]
    assert len(trials) == summary["n_evaluated"]
    rows = [json.loads(l) for t in trials for l in (t / "result.json").read_text().splitlines()]
    for t in trials:
        epochs = [json.loads(l)["training_iteration"] for l in (t / "result.json").read_text().splitlines()]
        assert epochs == list(range(1, len(epochs) + 1))
    assert all(isinstance(r.get("curve"), list) and len(r["curve"]) == r["epoch"] for r in rows if "epoch" in r)

    zoo = read_zoo(tmp_path / "zoo")
    zoo = [metrics_of(r) for r in zoo[zoo.stage == "search"].to_dict("records")]
    assert len(zoo) == summary["n_evaluated"]
    for m in zoo:
        assert len(m["val_curve"]) == min(m["fidelity"], 4) >= 1
    stopped = [m for m in zoo if m["fidelity"] < 4]
    assert stopped  # some candidates stopped at a rung ...
    assert all(r["fidelity"] in (1, 2) for r in stopped)
    candidates = (tmp_path / "candidates.csv").read_text()
    assert "stopped_at_rung" in candidates.splitlines()[0]

    again = run_search("ode", _cfg(tmp_path, resume=True))  # a finished run resumes to the same summary
    assert again["rungs"] == rungs and again["epochs_trained"] == summary["epochs_trained"]
    assert len([p for p in (tmp_path / "tune" / "ode_search").iterdir() if p.is_dir()]) == len(trials)


def test_a_time_budget_ends_the_search_and_the_retrain_still_runs(ray_local, tmp_path):
    """--search-minutes: Tune stops the search stage on time; the candidates it stopped count at
    the epochs they reached, those never started are not evaluated, and the pick is retrained."""
    cfg = _cfg(tmp_path, search_minutes=0.3)
    cfg.budget, cfg.max_gflops = 200, 0.06  # a space the search cannot exhaust in 18 s
    summary = run_search("ode", cfg)
    assert "time budget (0.3 min) ran out" in summary["ended"]
    assert 1 <= summary["n_evaluated"] < 200
    assert summary["pick"] and 0 <= summary["pick"]["test_auc"] <= 1
    import pandas as pd

    table = pd.read_csv(tmp_path / "candidates.csv", keep_default_na=False)
    assert not set(table.status) & {"pending", "running"}  # every record ended as something
    unfinished = table[table.status == "not evaluated"]
    assert (unfinished.reason != "").all()
