"""The equal-compute benchmark's table from hand-made run JSONs (fast: no training): the best
baseline is chosen by mean test AUC, ode_multi is paired with it over seeds, one-class runs
are flagged, and the runs done / to do are listed."""
import json

import numpy as np
import pytest
from scipy import stats

from benchmarks.equal_compute import best_baseline, flagged, run_path, table

AUC = {  # method -> test AUC per seed; random has the best baseline mean (0.80), resnet18 the best single run
    "tiny_cnn": [0.70, 0.72, 0.74],
    "resnet18": [0.95, 0.60, 0.61],
    "random": [0.79, 0.80, 0.81],
    "ode_multi": [0.83, 0.85, 0.82],
}


def write_run(folder, method, seed, auc, acc=0.8, pred_classes=2, dataset="adrenalmnist3d"):
    row = {"dataset": dataset, "method": method, "seed": seed, "budget_s": 1800.0, "wall_s": 1790.0,
           "test_auc": auc, "test_acc": acc, "test_pred_classes": pred_classes, "params": 12345,
           "test_majority_share": 0.77, "load_before": [1.0, 1.0, 1.0], "load_after": [2.1, 2.0, 1.9]}
    run_path(folder, dataset, method, seed).write_text(json.dumps(row))
    return row


@pytest.fixture
def results(tmp_path):
    for method, aucs in AUC.items():
        for seed, auc in enumerate(aucs):
            write_run(tmp_path, method, seed, auc, pred_classes=1 if (method, seed) == ("tiny_cnn", 1) else 2)
    return tmp_path


def test_the_table_pairs_ode_multi_with_the_best_baseline_by_mean_auc(results):
    lines = table(results, datasets=("adrenalmnist3d",), seeds=(0, 1, 2))
    paired = next(line for line in lines if line.startswith("ode_multi - "))
    assert paired.startswith("ode_multi - random (best baseline")
    p = stats.ttest_rel(AUC["ode_multi"], AUC["random"]).pvalue
    d = np.subtract(AUC["ode_multi"], AUC["random"])
    assert f"{d.mean():+.3f} +- {d.std(ddof=1):.3f} (paired t-test p = {p:.3f})" in paired
    row = next(line for line in lines if line.startswith("random "))
    assert "0.800 +- 0.010" in row and "1790 / 1800" in row
    targets = next(line for line in lines if line.startswith("targets"))
    assert "beats the best baseline on mean test AUC: yes" in targets
    # 0.833 mean AUC >= 0.827, but 0.8 ACC >= 0.721 too: meets MedMNIST's ResNet-18+3D
    assert ">= MedMNIST ResNet-18+3D on AUC and ACC: yes" in targets
    assert any(line.startswith("MedMNIST v2 ResNet-18+3D") and "0.827" in line for line in lines)


def test_a_one_class_run_is_flagged_and_so_is_an_acc_equal_to_the_majority_share(results):
    lines = table(results, datasets=("adrenalmnist3d",), seeds=(0, 1, 2))
    tiny = next(line for line in lines if line.startswith("tiny_cnn "))
    assert tiny.endswith("1 of 3 one class or ACC = majority")
    assert not next(line for line in lines if line.startswith("random ")).endswith("majority")
    assert flagged({"test_pred_classes": 2, "test_acc": 0.77, "test_majority_share": 0.77})
    assert not flagged({"test_pred_classes": 2, "test_acc": 0.78, "test_majority_share": 0.77})


def test_an_ode_run_at_the_majority_share_misses_the_majority_target(tmp_path):
    for seed, auc in enumerate(AUC["ode_multi"]):
        write_run(tmp_path, "ode_multi", seed, auc, acc=0.77 if seed == 2 else 0.8)
        write_run(tmp_path, "tiny_cnn", seed, 0.5)
    targets = next(line for line in table(tmp_path, datasets=("adrenalmnist3d",)) if line.startswith("targets"))
    assert targets.endswith("ACC above the majority share in every run: no")


def test_fewer_than_two_paired_seeds_give_no_test_and_the_missing_runs_are_listed(tmp_path):
    write_run(tmp_path, "ode_multi", 0, 0.9)
    write_run(tmp_path, "resnet18", 0, 0.8)
    write_run(tmp_path, "resnet18", 1, 0.8)
    lines = table(tmp_path, datasets=("adrenalmnist3d",), methods=("resnet18", "ode_multi"), seeds=(0, 1))
    assert "ode_multi - resnet18 (best baseline by mean test AUC): needs >= 2 paired seeds" in lines
    assert lines[-2] == "runs done: adrenalmnist3d resnet18 seeds 0 1; adrenalmnist3d ode_multi seeds 0"
    assert lines[-1] == "runs to do: adrenalmnist3d ode_multi seeds 1"


def test_the_best_baseline_is_chosen_by_mean_not_by_the_best_run():
    by = {m: {s: {"test_auc": a} for s, a in enumerate(aucs)} for m, aucs in AUC.items()}
    assert best_baseline(by) == "random"
    assert best_baseline({"tiny_cnn": by["tiny_cnn"], "ode_multi": by["ode_multi"]}) == "tiny_cnn"
    assert best_baseline({"ode_multi": by["ode_multi"]}) is None


def test_the_budgeted_ode_search_hands_on_its_stage_outputs_and_marks_their_times(monkeypatch):
    """The benchmark's ODE subclass times the search and retrain stages; the driver keeps what
    each stage returns, so the subclass must return the parent's output, not swallow it."""
    from benchmarks.equal_compute import Budget, budgeted_ode_search
    from orchestrator.searches import ode

    monkeypatch.setattr(ode.ODESearch, "search", lambda self, ctx: "search output")
    monkeypatch.setattr(ode.ODESearch, "retrain", lambda self, ctx: "retrain output")
    search = budgeted_ode_search(Budget(60), reserve_s=1)
    assert search.search(None) == "search output" and search.retrain(None) == "retrain output"
    assert set(search.marks) == {"search_start", "search_end", "retrain_start", "retrain_end"}
    assert search.marks["search_start"] <= search.marks["search_end"] <= search.marks["retrain_start"]
