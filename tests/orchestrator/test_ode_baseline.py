"""``--baseline NAME`` of the ODE search: a hand-made network trained like the retrained picks,
reported in summary.json, the printed summary, the zoo and the AUC-vs-params plot; resumable."""
import json
import math

import pytest

from medcore.errors import ConfigError
from orchestrator.cli import main
from orchestrator.config import ODE_BASELINES, FitOptions, ODESearchConfig
from orchestrator.data import SAMPLE_ROOT
from orchestrator.driver import run_search
from tests.figures import assert_same_points, capture, series


def test_unknown_baseline_is_one_line_listing_the_known_ones(capsys, tmp_path):
    with pytest.raises(ConfigError, match="unknown baseline 'resnet99'; known baselines: none, tiny_cnn, resnet10"):
        ODESearchConfig(baseline="resnet99").validate()
    assert main(["search", "ode", "--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT),
                 "--baseline", "vgg", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: --baseline: unknown baseline 'vgg'") and "\n" not in err
    assert all(name in err for name in ODE_BASELINES)
    assert not (tmp_path / "run.json").exists()  # refused before any work


def test_baseline_builders_match_the_names():
    from trainables.ode_trial import build_baseline

    sizes = {name: sum(p.numel() for p in build_baseline(name, 1, 1, 3).parameters())
             for name in ("tiny_cnn", "resnet10")}
    assert sizes["tiny_cnn"] < 30_000 < sizes["resnet10"]


def test_search_with_a_tiny_cnn_baseline(ray_local, tmp_path, capsys, monkeypatch):
    figures = capture(monkeypatch)
    cfg = ODESearchConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path), budget=4,
                          pop_size=4, fraction=0.1, max_gflops=0.02, top_k=1, retrain_epochs=1, seed=0,
                          baseline="tiny_cnn", fit=FitOptions(max_epochs=1))
    summary = run_search("ode", cfg)
    base = summary["baseline"]
    assert base["name"] == "tiny_cnn" and base["status"] == "ok" and base["epochs"] == 1
    assert 0 <= base["test_auc"] <= 1 and 0 <= base["test_acc"] <= 1
    from trainables.nets.tiny_cnn import TinyCNN

    assert base["params"] == sum(p.numel() for p in TinyCNN(1, 1, 3).parameters())
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert {"name", "test_auc", "test_acc", "params"} <= set(saved["baseline"])
    # the AUC-vs-params plot marks the baseline, labelled, at its parameters and test AUC
    assert (tmp_path / "test_auc_vs_params.png").is_file()
    [auc] = figures["test_auc_vs_params.png"]
    assert_same_points(series(auc, "points", "baseline tiny_cnn (same budget)"), [(base["params"], base["test_auc"])])
    assert "tiny_cnn" in auc["texts"] and "baseline tiny_cnn (same budget)" in auc["legend"]

    from orchestrator.search import Search
    from orchestrator.registry import get

    get("ode").print_summary(saved)
    printed = capsys.readouterr().out
    assert "best: " in printed and "(retrained) val_auc=" in printed
    assert f"baseline: tiny_cnn (same data, recipe and epochs) val_auc={base['val_auc']:.3f} " \
           f"test_acc={base['test_acc']:.3f}" in printed
    assert isinstance(get("ode"), Search)

    from orchestrator.export import build_model, read_state_dict
    from orchestrator.zoo import read_zoo

    zoo = read_zoo(tmp_path / "zoo", dataset="adrenalmnist3d")
    row = zoo[zoo.stage == "baseline"]
    assert len(row) == 1 and row.weights.notna().all() and row.iloc[0].test_auc == pytest.approx(base["test_auc"])
    net = build_model(json.loads(row.iloc[0].build))
    assert isinstance(net, TinyCNN)
    net.load_state_dict(read_state_dict(row.iloc[0].weights))  # the val-selected weights fit the rebuilt net

    # resumed: the finished baseline is restored, not trained again
    cfg.resume = True
    again = run_search("ode", cfg)
    assert again["baseline"] == base


def test_flops_floor_makes_stem_only_cells_infeasible():
    """--min-gflops: the stem-only cell (0.009 GFLOPs at S1M1F8) is refused, a one-op cell is not."""
    from orchestrator.config import Resources
    from orchestrator.data import load_sample
    from orchestrator.searches.ode import FeasibilityRule, _reason_kind
    from trainables.ode_trial import CandidateCost

    with pytest.raises(ConfigError, match=r"min_gflops: must be below max_gflops \(0.1\), got 0.2"):
        ODESearchConfig(min_gflops=0.2, max_gflops=0.1).validate()
    cfg = ODESearchConfig(min_gflops=0.06, max_gflops=0.1, resources=Resources(memory_per_trial_gb=1))
    rule = FeasibilityRule(cfg, CandidateCost(load_sample().info, 128, 100))
    arch = {"nodes": [], "edges": [[0, 6]], "n_stacks": 1, "n_modules": 1, "n_f_init": 8}
    refused = rule({"architecture": arch})
    assert refused.reason == "0.00948 GFLOPs is below the floor of 0.06"
    assert _reason_kind(refused.reason) == "GFLOPs is below the floor"
    assert refused.violation == pytest.approx(math.log(0.06 / 0.00948), rel=1e-3)  # ln(floor / FLOPs)
    one_op = dict(arch, nodes=[[1, "conv3_in_relu"]], edges=[[0, 1], [1, 6], [0, 6]])
    assert rule({"architecture": one_op}) is None
    over = rule({"architecture": dict(one_op, n_stacks=2)})
    assert "exceeds the cap" in over.reason and over.violation > 0


def test_summary_headline_is_the_picks_retrained_score_beside_the_baselines(tmp_path, capsys):
    """The demo's case: the pick's search-phase score (0.8236) equals the baseline's val AUC, its
    retrained val AUC is 0.716. The headline ``pick.val_auc`` is the retrained one; the search score
    is ``pick.search_val_metric``; ``best`` is the same entry (its former name)."""
    from types import SimpleNamespace

    from medcore.cell_genotype import CellArchitecture
    from orchestrator.search import RunContext
    from orchestrator.searches.ode import ODEBaselineOutput, ODERetrainOutput, ODESearch, ODESearchOutput

    arch = CellArchitecture(nodes=((1, "conv3_in_relu"),), edges=((0, 1), (0, 6), (1, 6)), n_stacks=1,
                            n_modules=1, n_f_init=8).to_config()
    record = {"candidate": 0, "generation": 0, "phase": "init", "status": "ok", "reason": "", "fitness": 0.8236,
              "duplicate_of": None, "genome": [0.1], "config": {"architecture": arch},
              "metrics": {"val_auc": 0.8236, "test_auc": 0.7, "params": 1000, "flops": 2e7}}
    retrained = {"status": "ok", "val_acc": 0.77, "val_auc": 0.716, "test_acc": 0.77, "test_auc": 0.69,
                 "params": 1000, "flops": 2e7, "epoch": 3, "val_pred_classes": 1, "test_pred_classes": 1}
    baseline = {"status": "ok", "val_acc": 0.8, "val_auc": 0.8236, "test_acc": 0.79, "test_auc": 0.8, "params": 5000,
                "flops": 1e7, "epoch": 3, "val_pred_classes": 2, "test_pred_classes": 2}
    outputs = {"search": ODESearchOutput(history=[record], best_per_generation=[(0, 0.8236)], generation=0, restarts=0,
                                         rungs=[{"epochs": 3, "candidates": 1}], epochs_trained=3, ended="",
                                         top=[record]),
               "retrain": ODERetrainOutput({json.dumps(arch, sort_keys=True): {"report": retrained, "weights": None}}),
               "baseline": ODEBaselineOutput(baseline)}
    cfg = ODESearchConfig(out=str(tmp_path), baseline="tiny_cnn", fit=FitOptions(metric="val_auc"), fraction=0.1,
                          val_fraction=1.0)
    ctx = RunContext(search=ODESearch(), cfg=cfg, run_id="r", outputs=outputs,
                     data=SimpleNamespace(info=SimpleNamespace(flag="adrenalmnist3d", size=28, synthetic=False,
                                                               path="x.npz")))
    search = ODESearch()
    s = search.summarize(ctx)
    pick, base = s["pick"], s["baseline"]
    assert pick["val_auc"] == 0.716 and pick["search_val_metric"] == 0.8236 and base["val_auc"] == 0.8236
    assert "search phase best_val_auc" in pick["search_val_metric_name"] and "val_metric" not in pick
    assert s["best"] == pick and pick["test_auc"] == 0.69 and pick["params"] == 1000
    assert pick["one_class"] is True and base["one_class"] is False
    assert s["warning"].startswith("The pick predicts one class for every case")
    search.print_summary({**s, "out": str(tmp_path), "n_ok": 1, "n_failed": 0})
    printed = capsys.readouterr().out
    assert "(retrained) val_auc=0.716" in printed and "ONE CLASS" in printed
    assert "baseline: tiny_cnn (same data, recipe and epochs) val_auc=0.824" in printed
