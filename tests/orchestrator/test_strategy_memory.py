"""The strategy search's memory plan (no Ray): every batch the space allows priced on the network
trials train, the choices that fit no node dropped from the space (said so), the default recipe's
batch halved to fit, a space whose smallest batch cannot fit refused in one line, and each trial's
own request (its batch and normalisation) handed to Tune in both stages."""
import json

import pytest

from medcore.errors import ResourceError
from orchestrator.config import Resources, StrategySearchConfig
from tests.stage_calls import Stop, capture_run_tuner
from orchestrator.search import RunContext, memory_bucket
from orchestrator.searches.strategy import StrategySearch

GB = 2**30
# Two normalisations keep the simulations few: the network's own (ResNet: batch norm; the default
# recipe's, so it is the search's first trial) and "none", the light one (about 3/4 of a ResNet's step).
SPACE = {"norm": ["keep", "none"], "batch_size": [32, 64, 128]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from orchestrator.data import load_medmnist, make_synthetic

    root = tmp_path_factory.mktemp("data")
    make_synthetic("breastmnist", root, 64, (48, 16, 16))
    return load_medmnist("breastmnist", 64, root)


def plan(data, limit=None, model="resnet18", space=SPACE, **kw):
    cfg = StrategySearchConfig(dataset="breastmnist", out="/tmp/unused-strategy-run", model=model,
                               space=json.dumps(space), **kw).validate()
    search = StrategySearch()
    ctx = RunContext(search=search, cfg=cfg, data=data, run_id="test")
    ctx.memory = search.plan_memory(ctx, limit)
    return search, ctx


@pytest.fixture(scope="module")
def unlimited(data):
    return plan(data)


def test_every_batch_of_the_space_is_priced_on_the_network_trials_train(unlimited, data):
    """No limit: nothing lowered; the plan's bytes is the largest batch at the heaviest norm;
    a ResNet-18 costs far more than the tiny CNN, its batch norm more than none, retrain >= search."""
    _, ctx = unlimited
    search, retrain = ctx.memory["search"], ctx.memory["retrain"]
    assert search.batches == (32, 64, 128) and search.batch_size == 128 and not search.lowered
    assert retrain.batch_size == 128 and not retrain.lowered
    cost = search.cost
    assert search.bytes == cost(128) == cost(128, "keep") > cost(128, "none")
    assert cost(32) < cost(64) < cost(128)
    assert all(retrain.cost(b) >= cost(b) for b in (32, 64, 128))  # + the test split's second float copy
    _, tiny = plan(data, model="tiny_cnn")
    assert tiny.memory["search"].bytes < search.bytes / 3
    d = search.to_dict()
    assert d["batches"] == [32, 64, 128] and d["dropped_batches"] == [] and d["per_trial"]
    assert d["gb_by_batch"]["128"] == round(cost(128) / GB, 2)


def test_batches_that_fit_no_node_are_dropped_from_the_space_and_the_default_is_lowered(unlimited, data):
    """A limit between batch 64's and batch 128's need: Optuna samples 32 or 64 only, the default
    recipe (--batch-size 128) is retrained at 64, and both are said."""
    _, full = unlimited
    cost = full.memory["retrain"].cost
    limit = (cost(64) + cost(128)) / 2
    search, ctx = plan(data, limit)
    s, r = ctx.memory["search"], ctx.memory["retrain"]
    assert s.batches == (32, 64) and s.dropped == (128,) and s.lowered and s.batch_size == 64
    assert s.requested_batch == 128 and s.bytes <= limit
    assert "batch 128 dropped from the space to fit" in s.describe()
    assert r.lowered and r.batch_size == 64 and r.requested_batch == 128 and r.bytes <= limit
    assert "default recipe's batch lowered from 128 to 64" in r.describe()
    search.stages(ctx)
    assert ctx.setup.space["batch_size"] == ("choice", (32, 64))
    assert search._default(ctx)["batch_size"] == 64


def test_a_space_whose_smallest_batch_cannot_fit_is_refused_naming_the_space(data):
    with pytest.raises(ResourceError, match=r"^a strategy trial \(resnet18, 64 px\) needs .* GB at batch 32, but the "
                                            r"largest node offers 1.0 GB to Ray; lower the batch_size choices of "
                                            r"--space .*, --size or the network$"):
        plan(data, 1 * GB)


def test_each_trial_requests_its_own_strategy_in_both_stages(data, monkeypatch):
    """The search's resources are a callable of the trial's config (its batch and norm, whole GiB);
    the retrain's price each label's strategy; the searcher's space and first trial are the plan's."""
    _, full = plan(data)
    cost = full.memory["retrain"].cost
    search, ctx = plan(data, (cost(64) + cost(128)) / 2)
    calls = capture_run_tuner(ctx, monkeypatch)
    search.stages(ctx)
    with pytest.raises(Stop):
        search.search(ctx)
    name, kw = calls[-1]
    searcher = kw["tune_config"].search_alg
    assert searcher._space["batch_size"].choices == (32, 64)
    assert searcher._points_to_evaluate[0]["batch_size"] == 64  # the default recipe, lowered

    def granted(resources, config):
        bundle = resources(config).bundles[0]
        assert bundle["CPU"] == ctx.cfg.resources.cpus_per_trial
        return bundle["memory"]

    whole = lambda b: memory_bucket(b, ctx.memory_limit)
    s_cost = ctx.memory["search"].cost
    assert granted(kw["resources"], {"batch_size": 64, "norm": "none"}) == whole(s_cost(64, "none"))
    assert granted(kw["resources"], {"batch_size": 32, "norm": "keep"}) == whole(s_cost(32, "keep"))
    assert granted(kw["resources"], {"batch_size": 64, "norm": "group"}) == whole(s_cost(64))  # unpriced: heaviest

    best = {"init": "default", "norm": "none", "dropout": 0.1, "l1": 0.0, "l2": 0.0, "optimizer": "sgd",
            "lr": 0.01, "schedule": "none", "batch_size": 32, "augment": "flip"}
    monkeypatch.setattr(search, "best_row", lambda ctx: dict(best))
    with pytest.raises(Stop):
        search.retrain(ctx)
    name, kw = calls[-1]
    assert kw["param_space"]["label"] == {"grid_search": ["best", "default"]}
    r_cost = ctx.memory["retrain"].cost
    assert granted(kw["resources"], {"label": "best"}) == whole(r_cost(32, "none"))
    assert granted(kw["resources"], {"label": "default"}) == whole(r_cost(64, "keep"))
    assert search._default(ctx)["batch_size"] == 64  # the strategy the retrain's "default" trains


def test_a_fixed_memory_per_trial_overrides_the_estimates(data, monkeypatch):
    search, ctx = plan(data, 4 * GB, resources=Resources(memory_per_trial_gb=4))
    assert all(p.bytes <= 4 * GB for p in ctx.memory.values())
    resources = search._resources(ctx, "search")
    assert resources.bundles[0]["memory"] == 4 * GB


def test_a_space_no_node_can_hold_is_refused_before_ray_starts(tmp_path):
    """One line, exit 2, no run manifest and no Ray session (its temp dir is never made)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from orchestrator.data import SAMPLE_ROOT

    ray_tmp, out = tmp_path / "ray", tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "search", "strategy",
                           "--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT), "--model", "resnet18", "--memory-per-trial-gb", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("medtune: error: a strategy trial (resnet18, 28 px) needs ")
    assert "lower the batch_size choices of --space" in lines[0]
    assert not ray_tmp.exists() and not (out / "run.json").exists()
