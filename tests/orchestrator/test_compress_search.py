"""The compression search driver end to end on the shipped sample, and its bad inputs."""
import json

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.config import BaseTrainOptions, CompressSearchConfig, Resources
from orchestrator.driver import run_search
from orchestrator.data import SAMPLE_ROOT, load_sample


@pytest.mark.parametrize("args,message", [
    (["--model", "vgg16"], "unknown model 'vgg16'; known models: resnet10, resnet18, resnet34, resnet50"),
    (["--base-checkpoint", "/no/such/checkpoint"], "--base-checkpoint: /no/such/checkpoint not found"),
    (["--budget", "20", "--initial", "50"], "--budget: must be at least the initial sample --initial (50), got 20"),
    (["--train-epochs", "0"], "--train-epochs: must be >= 1, got 0"),
])
def test_bad_input(args, message, capsys, tmp_path):
    assert main(["search", "compress", "--dataset", "adrenalmnist3d", "--data-root", str(SAMPLE_ROOT),
                 "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medtune: error: {err[len('medtune: error: '):]}" and message in err and "\n" not in err


def test_tiny_compression_search_on_the_shipped_sample(ray_local, tmp_path):
    # small train/val for a 1-epoch base, a quarter of the test split for fast evaluations
    data = load_sample().low_fidelity(0.1, seed=0).subset("test", 0.25, seed=0)
    cfg = CompressSearchConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path),
                               model="resnet10", fit=BaseTrainOptions(max_epochs=1), budget=6, initial=4, infill=2,
                               ctaea_pop=12, ctaea_gens=10, resources=Resources(max_concurrent=2), inference_batch=32,
                               inference_repeats=1)
    s = run_search("compress", cfg, data)
    assert s["search"] == "compress" and s["synthetic"] is False and s["n_evaluated"] == 6
    base = s["base"]
    assert 0 < base["accuracy"] <= 1 and base["flops"] > 0 and base["inference_ms"] > 0
    table = pd.read_csv(tmp_path / "evaluated.csv")
    assert len(table) == 6 and set(table.iteration) == {0, 1}
    ok = table[table.status == "ok"]
    # the constraint of eq. (1) is what the table says it is
    assert ((ok.accuracy >= 0.96 * base["accuracy"] - 1e-12) == ok.feasible).all()
    for p in s["pareto"]:
        assert p["feasible"] and p["accuracy"] >= 0.96 * base["accuracy"] - 1e-12
    assert s["hypervolume"] >= 0 and (s["hypervolume"] > 0) == bool(s["pareto"])
    feasible = ok[ok.feasible]
    if len(feasible):  # the fastest feasible point of all evaluated, against the base
        f = s["fastest_feasible"]
        assert f["inference_ms"] == pytest.approx(feasible.inference_ms.min())
        assert f["inference_ratio"] == pytest.approx(f["inference_ms"] / base["inference_ms"])
    for png in ("objective_space.png", "inference_vs_nonzero.png", "confusion_matrices.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["hypervolume"] == pytest.approx(s["hypervolume"])
    # reuse the trained base: a second search by --base-checkpoint, pure CTAEA this time
    cfg2 = CompressSearchConfig(dataset="adrenalmnist3d", data_root=str(SAMPLE_ROOT), out=str(tmp_path / "ctaea"),
                                model="resnet10", base_checkpoint=base["checkpoint"], searcher="ctaea",
                                ctaea_pop=4, ctaea_gens=1, resources=Resources(max_concurrent=2), inference_batch=32,
                                inference_repeats=1)
    s2 = run_search("compress", cfg2, data)
    assert s2["searcher"] == "ctaea" and 1 <= s2["n_evaluated"] <= 4
    assert s2["base"]["accuracy"] == pytest.approx(base["accuracy"])
    # the zoo holds the base (with its weights) and every evaluated point
    from orchestrator.zoo import read_zoo

    zoo = read_zoo(tmp_path / "zoo")
    assert len(zoo[zoo.stage == "search"]) == 6 and zoo[zoo.stage == "base"].weights.notna().all()
