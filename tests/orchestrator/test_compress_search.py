"""The compression search driver end to end on the shipped sample, and its bad inputs."""
import json

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.config import BaseTrainOptions, CompressSearchConfig, Resources
from orchestrator.driver import run_search
from orchestrator.data import SAMPLE_ROOT, load_sample
from tests.figures import assert_same_points, capture, series


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


def test_tiny_compression_search_on_the_shipped_sample(ray_local, tmp_path, monkeypatch):
    # small train/val for a 1-epoch base, a quarter of the test split for fast evaluations
    data = load_sample().low_fidelity(0.1, seed=0).subset("test", 0.25, seed=0)
    figures = capture(monkeypatch)
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
    feasible = ok[ok.feasible]
    # this seed's tiny run has feasible points: the checks of D* and the fastest point are not vacuous
    assert len(feasible) > 0 and s["pareto"]
    for p in s["pareto"]:
        assert p["feasible"] and p["accuracy"] >= 0.96 * base["accuracy"] - 1e-12
    assert s["hypervolume"] > 0
    f = s["fastest_feasible"]  # the fastest feasible point of all evaluated, against the base
    assert f["inference_ms"] == pytest.approx(feasible.inference_ms.min())
    assert f["inference_ratio"] == pytest.approx(f["inference_ms"] / base["inference_ms"])
    _check_plots(figures, tmp_path, ok, s, n_test=len(data.labels["test"]))
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


def _check_plots(figures: dict, out, ok: pd.DataFrame, s: dict, n_test: int):
    """The three PNGs exist and draw what the table and summary hold."""
    for png in ("objective_space.png", "inference_vs_nonzero.png", "confusion_matrices.png"):
        assert (out / png).is_file() and png in figures, png
    base = s["base"]
    [space] = figures["objective_space.png"]
    points = dict(space["points"])
    for label, rows in (("feasible", ok[ok.feasible]), ("infeasible", ok[~ok.feasible])):
        assert_same_points(points.get(label, []), zip(rows.f1_relative, rows.accuracy))
    assert_same_points(points["base model"], [(1.0, base["accuracy"])])
    assert_same_points(series(space, "lines", "D* (feasible non-dominated)"),
                       [(p["f1_relative"], p["accuracy"]) for p in s["pareto"]])
    [threshold] = [xy[0, 1] for label, xy in space["lines"] if label.startswith("accuracy constraint")]
    assert threshold == pytest.approx(s["constraint"]["threshold"])
    [timing] = figures["inference_vs_nonzero.png"]
    timed = [xy for label, xy in timing["points"] if label in ("float", "int8 quantized")]
    assert sum(len(xy) for xy in timed) == ok.inference_ms.notna().sum() > 0
    assert dict(timing["points"])["base model"][0, 1] == pytest.approx(base["inference_ms"])
    confusions = figures["confusion_matrices.png"]
    assert [ax["title"].split("\n")[0] for ax in confusions] == ["base model", "most accurate compressed"]
    assert [int(ax["images"][0].sum()) for ax in confusions] == [n_test, n_test]  # every test case counted


# ---- without Ray: the constraint's metric, one-class flags, candidate weights -----------------------

from types import SimpleNamespace  # noqa: E402

from medcore.errors import ConfigError, RunError  # noqa: E402
from orchestrator.searches import compress as cs  # noqa: E402

GENOME = {"x1": 1, "x2": 1, "x3": 30.0, "x4": 40.0, "x5": 0, "x6": 0, "x7": 0, "subset_seed": 0}


def test_constraint_metric_is_a_config_field_refused_in_one_line():
    with pytest.raises(ConfigError, match="accuracy, auc or balanced_accuracy.*f1") as refused:
        CompressSearchConfig(constraint_metric="f1").validate()
    assert refused.value.field == "constraint_metric"
    CompressSearchConfig(constraint_metric="balanced_accuracy").validate()
    from orchestrator.schema import flag_names

    assert flag_names(CompressSearchConfig)["constraint_metric"] == "--constraint-metric"


def test_the_constraint_reads_the_chosen_metric_of_the_base():
    base_eval = {"status": "ok", "accuracy": 0.77, "auc": 0.64, "balanced_accuracy": 0.5}
    assert cs.constraint_of("accuracy", 0.8, base_eval) == {"constraint_metric": "accuracy", "base_constraint": 0.8}
    assert cs.constraint_of("auc", 0.8, base_eval) == {"constraint_metric": "auc", "base_constraint": 0.64}
    assert cs.constraint_of("balanced_accuracy", 0.8, base_eval)["base_constraint"] == 0.5
    with pytest.raises(RunError, match=r"constraint is on auc but .*\(its test auc is nan\); set constraint_metric to accuracy"):
        cs.constraint_of("auc", 0.8, {**base_eval, "auc": float("nan")})


def _record(i, x7, feasible, accuracy, pred_classes):
    return {"trial_id": f"t{i}", "iteration": 0, "status": "ok", "reason": "", "feasible": feasible,
            "config": {**GENOME, "x7": x7, "x3": 10.0 * (i + 1)}, "constraint": -0.01 if feasible else 0.2,
            "objectives": {"f1_relative": 1.0 - 0.2 * i, "f2_error": 1 - accuracy}}


def _measured(i, accuracy, pred_classes):
    return {"accuracy": accuracy, "auc": 0.6, "balanced_accuracy": 0.5, "test_pred_classes": pred_classes,
            "f1_compute": 1.0, "flops": 10.0, "nonzero_rate": 0.9 - 0.1 * i, "size_mb": 1.0,
            "inference_ms": 5.0 - i, "quantized": False, "float_layers": [], "confusion": [[60, 0], [9, 0]]}


def _ctx(tmp_path, base_pred_classes, model):
    from orchestrator.search import RunContext
    from trainables.compress_trial import BaseCheckpoint

    rows = [(0, 0, True, 0.87, 1), (1, 1, True, 0.87, 1), (2, 0, False, 0.6, 2)]
    base_eval = {"status": "ok", **_measured(-1, 0.87, base_pred_classes), "inference_ms": 10.0}
    base = BaseCheckpoint(model=model, build={"name": "resnet10"}, meta={"metrics": {"test_acc": 0.87}})
    cfg = CompressSearchConfig(dataset="adrenalmnist3d", out=str(tmp_path))
    history = [_record(i, x7, f, a, p) for i, x7, f, a, p in rows]
    outputs = {"base": cs.CompressBaseOutput(str(tmp_path / "base"), base),
               "search": cs.CompressSearchOutput(
                   base_eval=base_eval, measured={f"t{i}": _measured(i, a, p) for i, _, _, a, p in rows},
                   history=history, d_star=[r for r in history if r["feasible"]], hypervolume=0.75)}
    return RunContext(search=cs.CompressSearch(), cfg=cfg, run_id="r", outputs=outputs, data=SimpleNamespace(
        info=SimpleNamespace(flag="adrenalmnist3d", size=28, synthetic=False)))


def _linear():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))


def test_a_one_class_base_and_candidates_are_flagged_in_summary_and_table(tmp_path, monkeypatch):
    figures = capture(monkeypatch)
    ctx = _ctx(tmp_path, base_pred_classes=1, model=_linear())
    s = cs.CompressSearch().summarize(ctx)
    assert s["base"]["one_class"] is True and s["base"]["test_pred_classes"] == 1
    assert s["warning"].startswith("The base model predicts one class for every case on the test split")
    assert "2 of 3 evaluated candidates predict one class for every case (2 of 2 in D*)" in s["warning"]
    assert all(p["one_class"] for p in s["pareto"]) and s["n_one_class"] == 2
    assert s["fastest_feasible"]["one_class"] is True
    assert s["constraint"]["metric"] == "accuracy" and s["constraint"]["threshold"] == pytest.approx(0.96 * 0.87)
    table = pd.read_csv(tmp_path / "evaluated.csv")
    assert table.one_class.tolist() == [True, True, False] and table.test_pred_classes.tolist() == [1, 1, 2]
    # the plots draw these three candidates and the base; both confusion matrices say "one class"
    [space] = figures["objective_space.png"]
    assert_same_points(series(space, "points", "feasible"), [(1.0, 0.87), (0.8, 0.87)])
    assert_same_points(series(space, "points", "infeasible"), [(0.6, 0.6)])
    assert_same_points(series(space, "points", "base model"), [(1.0, 0.87)])
    assert "accuracy constraint (0.835)" in space["legend"]
    [timing] = figures["inference_vs_nonzero.png"]
    assert_same_points(series(timing, "points", "float"), [(0.9, 5.0), (0.8, 4.0), (0.7, 3.0)])
    assert "int8 quantized" not in timing["legend"] and timing["ylabel"] == "inference time, batch 128, CPU (ms)"
    for ax in figures["confusion_matrices.png"]:
        assert ax["images"][0].tolist() == [[60, 0], [9, 0]]
        assert ax["title"].endswith("predicts one class for every case")
    # a base that predicts both classes: no warning about the base, the candidates still counted
    ctx = _ctx(tmp_path, base_pred_classes=2, model=_linear())
    s = cs.CompressSearch().summarize(ctx)
    assert s["base"]["one_class"] is False and not s["warning"].startswith("The base model")


def test_zoo_rows_of_d_star_float_points_carry_weights_the_others_say_why_not(tmp_path):
    import torch

    from trainables.compression import apply_pruning, predict
    from medcore.compression_genome import CompressionGenome

    model = _linear()
    ctx = _ctx(tmp_path, base_pred_classes=2, model=model)
    search = cs.CompressSearch()
    search.summarize(ctx)
    records = {r.trial_id: r for r in search.zoo_records(ctx) if r.stage == "search"}
    kept, int8, outside = records["t0"], records["t1"], records["t2"]
    assert kept.weights and kept.build == {"builder": cs.BASE_BUILDER, "kwargs": {"name": "resnet10"}}
    assert "weights_reason" not in kept.metrics and kept.metrics["test_pred_classes"] == 1
    assert int8.weights is None and "int8" in int8.metrics["weights_reason"]
    assert outside.weights is None and "only D* points" in outside.metrics["weights_reason"]
    # the stored weights are the base pruned by the genome: the model the trial measured
    expected = _linear()
    apply_pruning(expected, CompressionGenome.from_config({**GENOME, "x3": 10.0}))
    stored = _linear()
    stored.load_state_dict(torch.load(f"{kept.weights}/model.pt", weights_only=True))
    x = torch.randint(0, 255, (4, 8), dtype=torch.uint8).numpy()
    assert torch.equal(predict(stored, x), predict(expected, x))
    assert torch.count_nonzero(stored[1].weight) < stored[1].weight.numel()  # pruned, not the base
    assert torch.count_nonzero(model[1].weight) == model[1].weight.numel()  # the driver's base untouched
