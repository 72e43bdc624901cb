"""The IAC search (``medtune search darts``) end to end under local Ray, and its bad inputs."""
import json
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.config import DartsSearchConfig, Resources
from orchestrator.driver import run_search
from tests.figures import capture, series

HIPPOCAMPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "segmentation" / "msd_hippocampus"
TINY = {"size": 32, "backbone": "unet", "unet_features": "4,4,8,8,8,4", "stage1_epochs": 1, "search_epochs": 1,
        "warmup": 0, "stage3_epochs": 1, "k": 2}


@pytest.mark.parametrize("args,message", [
    (["--backbone", "vgg99"], "--backbone: unknown backbone 'vgg99'; known backbones: unet, resnet, efficientnet"),
    (["--baselines", "dense"], "--baselines: unknown baseline 'dense'; known baselines: attention, nested"),
    (["--size", "40"], "--size: must be a multiple of 32 (>= 32), got 40"),
    (["--warmup", "5", "--search-epochs", "5"], "--warmup: must be below --search-epochs (5)"),
    (["--data", "/no/such/folder"], "--data: /no/such/folder not found"),
    (["--snapshots", "25,x"], "--snapshots: expected comma-separated whole numbers"),
    (["--unet-features", "4,4,8"], "--unet-features: needs 6 comma-separated ints, got 3"),
])
def test_bad_input_is_one_line(args, message, capsys, tmp_path):
    assert main(["search", "darts", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: ") and message in err and "\n" not in err


def test_a_folder_without_dataset_json_is_one_line(capsys, tmp_path):
    folder = tmp_path / "not_decathlon"
    folder.mkdir()
    assert main(["search", "darts", "--data", str(folder), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert "has no dataset.json" in err and "\n" not in err


def _check_outputs(s: dict, out: Path, synthetic: bool, baselines: list[str], figures: dict):
    assert s["search"] == "darts" and s["synthetic"] is synthetic
    assert 0.0 <= s["baseline_dice"] <= 1.0
    best = s["best"]
    assert best["epoch"] == 1 and 0.0 <= best["dice"] <= 1.0 and len(best["genotype"]["edges"]) == 8
    assert best["gain"] == pytest.approx(best["dice"] - s["baseline_dice"])
    genotypes = pd.read_csv(out / "genotypes.csv")
    assert list(genotypes.epoch) == [1] and genotypes.synthetic.all() == synthetic
    assert genotypes.stage3_dice[0] == pytest.approx(best["dice"])
    stage3 = pd.read_csv(out / "stage3.csv")
    assert sorted(stage3.skip) == sorted(["iac", *baselines]) and (stage3.status == "ok").all()
    table = s["improvement"]["unet"]
    assert table["iac"]["gain"]["mean"] == pytest.approx(best["gain"])
    for b in baselines:
        assert table[b]["gain"]["mean"] == pytest.approx(table[b]["dice"]["mean"] - s["baseline_dice"])
    assert s["statistics"]["iac"]["n"] == 1 and s["statistics"]["iac"]["ttest_p"] is None  # one run: no test
    _check_plots(figures, out, s, baselines)
    assert json.loads((out / "summary.json").read_text())["best"]["dice"] == pytest.approx(best["dice"])
    from orchestrator.zoo import read_zoo

    zoo = read_zoo(out / "zoo")
    assert set(zoo.stage) == {"stage1", "stage3"} and zoo.weights.notna().all()
    assert set(zoo[zoo.stage == "stage3"].family) == {"iac", *baselines}
    assert zoo.synthetic.all() == synthetic


def _check_plots(figures: dict, out: Path, s: dict, baselines: list[str]):
    """The four PNGs exist and draw the best cell, its alpha/beta history, the Dice table and slices."""
    from trainables.nets.iac_cell import N_EDGES, PRIMITIVES

    for png in ("best_cell.png", "alpha_beta.png", "dice_per_stage.png", "val_slices.png"):
        assert (out / png).is_file() and png in figures, png
    best, table = s["best"], s["improvement"]["unet"]
    [cell] = figures["best_cell.png"]
    assert sorted(t for t in cell["texts"] if t in PRIMITIVES) == sorted(op for op, _ in best["genotype"]["edges"])
    beta, alpha = figures["alpha_beta.png"]
    assert len(beta["lines"]) == N_EDGES and len(alpha["lines"]) == len(PRIMITIVES)
    assert all(xy[:, 0].tolist() == [1] for _, xy in beta["lines"] + alpha["lines"])  # one search epoch
    assert sum(xy[0, 1] for _, xy in alpha["lines"]) == pytest.approx(1.0)  # softmax over the operations
    [dice] = figures["dice_per_stage.png"]
    assert [label for label, _ in dice["bars"]] == ["stage I", "stage II (val_search)", "stage III IAC",
                                                    *sorted(baselines)]
    assert series(dice, "bars", "stage I").tolist() == [pytest.approx(s["baseline_dice"])]
    assert series(dice, "bars", "stage III IAC").tolist() == [pytest.approx(table["iac"]["dice"]["mean"])]
    for b in baselines:
        assert series(dice, "bars", b).tolist() == [pytest.approx(table[b]["dice"]["mean"])]
    slices = figures["val_slices.png"]
    assert 1 <= len(slices) <= 4 and all(len(ax["images"]) == 1 and ax["title"].startswith("val slice")
                                         for ax in slices)


def test_tiny_darts_search_on_synthetic_images(ray_local, tmp_path, monkeypatch):
    figures = capture(monkeypatch)
    cfg = DartsSearchConfig(data="synthetic", out=str(tmp_path), max_cases=4, batch_size=16, baselines="attention",
                            resources=Resources(max_concurrent=2), **TINY)
    s = run_search("darts", cfg)
    _check_outputs(s, tmp_path, synthetic=True, baselines=["attention"], figures=figures)
    assert s["data"]["cases"]["train_search"] >= 1 and s["dataset"] == "synthetic"


@pytest.mark.skipif(not (HIPPOCAMPUS / "dataset.json").is_file(), reason="MSD hippocampus not in ../shared/data")
def test_tiny_darts_search_on_real_hippocampus_cases(ray_local, tmp_path, monkeypatch):
    figures = capture(monkeypatch)
    cfg = DartsSearchConfig(data=str(HIPPOCAMPUS / "hippocampus_volumes.npz"), out=str(tmp_path), max_cases=3,
                            batch_size=64, baselines="", resources=Resources(max_concurrent=2), **TINY)
    s = run_search("darts", cfg)
    _check_outputs(s, tmp_path, synthetic=False, baselines=[], figures=figures)
    assert s["data"]["cases"] == {"train_dt": 2, "val_dt": 1, "train_search": 1, "val_search": 1}


def test_table2_gains_and_paired_tests_over_runs():
    from scipy import stats

    from orchestrator.searches.darts_report import improvement_table, paired_tests

    g1 = {"edges": [["identity", 0], ["identity", 1]] * 4, "concat": [2, 3, 4, 5]}
    g2 = {"edges": [["sep_conv_3x3", 0], ["identity", 1]] * 4, "concat": [2, 3, 4, 5]}
    stage1 = {"unet": {"val_dice": 0.60}, "resnet": {"val_dice": 0.50}}
    rows = []
    for backbone, dice_g1, dice_g2, att in (("unet", [0.61, 0.63], [0.66, 0.70], [0.58, 0.62]),
                                            ("resnet", [0.52, 0.55], [0.51, 0.50], [0.49, 0.53])):
        for seed in (0, 1):
            rows += [{"backbone": backbone, "skip": "iac", "genotype": g1, "seed": seed, "snapshot_epochs": [1],
                      "val_dice": dice_g1[seed], "dice_gain": dice_g1[seed] - stage1[backbone]["val_dice"]},
                     {"backbone": backbone, "skip": "iac", "genotype": g2, "seed": seed, "snapshot_epochs": [2],
                      "val_dice": dice_g2[seed], "dice_gain": dice_g2[seed] - stage1[backbone]["val_dice"]},
                     {"backbone": backbone, "skip": "attention", "genotype": None, "seed": seed,
                      "snapshot_epochs": [], "val_dice": att[seed], "dice_gain": att[seed] - 0.0}]
    table = improvement_table(stage1, rows)
    # the best genotype per backbone by mean val Dice: g2 on unet (0.68), g1 on resnet (0.535)
    assert table["unet"]["iac"]["gain"]["mean"] == pytest.approx(0.08)
    assert table["resnet"]["iac"]["gain"]["mean"] == pytest.approx(0.035)
    assert table["unet"]["iac"]["gain"]["variance"] == pytest.approx(((0.66 - 0.68) ** 2 + (0.70 - 0.68) ** 2))
    assert table["unet"]["attention"]["gain"]["mean"] == pytest.approx(0.0)
    s = paired_tests(stage1, rows)
    base = [0.60, 0.60, 0.50, 0.50]
    iac = [0.66, 0.70, 0.52, 0.55]
    assert s["iac"]["n"] == 4 and s["iac"]["mean_gain"] == pytest.approx((0.06 + 0.10 + 0.02 + 0.05) / 4)
    assert s["iac"]["ttest_p"] == pytest.approx(stats.ttest_rel(iac, base).pvalue)
    assert s["iac"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon([i - b for i, b in zip(iac, base)]).pvalue)
    assert s["attention"]["n"] == 4
