"""``implant: replace | residual`` (issue #22): how an IAC's output enters the frozen U-Net's decoder.

``residual`` hands the decoder ``skip + cell(...)`` with the cell's output 1x1 conv zeroed, so at
initialisation the implanted network is the frozen U-Net exactly and only training moves it away;
``replace`` (the paper's) hands it the cell's output instead of the skip tensor.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from medcore.errors import ConfigError
from trainables.nets.iac_cell import (IMPLANTS, ArchParameters, DiscreteCell, Genotype, SearchCell, discrete_cells,
                                      search_cells)

torch.set_num_threads(1)

FEATURES = (4, 4, 8, 8, 8, 4)
GENOTYPE = Genotype(edges=(("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("identity", 2), ("avg_pool_3x3", 1),
                           ("max_pool_3x3", 0), ("sep_conv_3x3", 3), ("identity", 1), ("dil_conv_5x5", 4)))
SIZE = {2: 32, 3: 32}  # BasicUNet pools 4 times (16^3 leaves InstanceNorm one voxel)


def _unet(dims: int):
    from trainables.nets.unets import build_unet

    torch.manual_seed(0)
    return build_unet("unet", dims, 1, 1, features=FEATURES).freeze()


def _cells(kind: str, unet, implant: str, dims: int):
    torch.manual_seed(1)
    if kind == "search":
        return search_cells(unet.skip_channels(), ArchParameters(), k=2, spatial_dims=dims, implant=implant)
    return discrete_cells(unet.skip_channels(), GENOTYPE, spatial_dims=dims, implant=implant)


def _input(dims: int, batch: int = 2):
    torch.manual_seed(2)
    return torch.rand(batch, 1, *([SIZE[dims]] * dims))


def _implanted(kind: str, implant: str, dims: int):
    """(the implanted model, the frozen U-Net's output on the test input, that input)."""
    unet = _unet(dims)
    x = _input(dims)
    with torch.no_grad():
        reference = unet(x)  # no skip modules: the plain frozen U-Net
    unet.set_skips(_cells(kind, unet, implant, dims))
    return unet, reference, x


CASES = [("search", 2), ("discrete", 2), ("search", 3), ("discrete", 3)]


@pytest.mark.parametrize("kind,dims", CASES)
def test_residual_cells_start_as_the_frozen_unet_exactly(kind, dims):
    model, reference, x = _implanted(kind, "residual", dims)
    for mode in (True, False):  # the cells' BatchNorm in training and in eval mode
        model.train(mode)
        with torch.no_grad():
            out = model(x)
        assert torch.equal(out, reference), (kind, dims, mode)
    for cell in model.skips:
        assert cell.implant == "residual"
        assert not cell.post.weight.any() and not cell.post.bias.any()


@pytest.mark.parametrize("kind,dims", CASES[:2])
def test_replace_cells_change_the_output_at_init(kind, dims):
    model, reference, x = _implanted(kind, "replace", dims)
    with torch.no_grad():
        out = model.train()(x)
    assert out.shape == reference.shape and not torch.allclose(out, reference, atol=1e-4)
    assert all(cell.post.weight.abs().sum() > 0 for cell in model.skips)


@pytest.mark.parametrize("kind", ["search", "discrete"])
def test_both_forms_draw_the_same_initial_weights_but_the_output_conv(kind):
    """A fair A/B: at one seed, residual differs from replace only in the zeroed output conv."""
    unet = _unet(2)
    a = {k: v for k, v in torch.nn.ModuleList(_cells(kind, unet, "replace", 2)).state_dict().items()}
    b = {k: v for k, v in torch.nn.ModuleList(_cells(kind, unet, "residual", 2)).state_dict().items()}
    assert a.keys() == b.keys()
    for k in a:
        if ".post." in k:
            assert a[k].abs().sum() > 0 and not b[k].any(), k
        else:
            assert torch.equal(a[k], b[k]), k


def _step(model, x, lr: float = 0.1) -> None:
    params = [p for p in model.skips.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    target = (x > 0.5).float()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("kind,dims", CASES[:2])
def test_one_step_moves_a_residual_cell_away_from_the_frozen_unet(kind, dims):
    model, reference, x = _implanted(kind, "residual", dims)
    model.train()
    _step(model, x)
    assert all(cell.post.weight.abs().sum() > 0 for cell in model.skips)  # the zeroed conv got a gradient
    with torch.no_grad():
        out = model.eval()(x)
    assert not torch.allclose(out, reference, atol=1e-6)
    # and past the first step the gradient reaches the cell's inside too (it is no dead adapter)
    model.train()
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    assert all(cell.pre_encoder[1].weight.grad.abs().sum() > 0 for cell in model.skips)


@pytest.mark.parametrize("implant", IMPLANTS)
@pytest.mark.parametrize("kind", ["search", "discrete"])
def test_the_frozen_unet_gets_no_gradient_and_does_not_change(kind, implant):
    model, _, x = _implanted(kind, implant, 2)
    before = {k: v.clone() for k, v in model.unet_state_dict().items()}
    model.train()
    for _ in range(2):
        _step(model, x)
    assert all(not p.requires_grad and p.grad is None for p in model.net.parameters())
    after = model.unet_state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_cell_refuses_an_unknown_implant():
    with pytest.raises(ValueError, match="unknown implant 'adapter'; known: replace, residual"):
        DiscreteCell(GENOTYPE, 4, 4, 2, implant="adapter")
    with pytest.raises(ValueError, match="unknown implant"):
        SearchCell(4, 4, ArchParameters(), 2, 2, implant="")


# ---- threading: config -> Stage II / Stage III trainables -> summary and zoo ---------------------

def test_the_config_refuses_an_unknown_implant_in_one_line():
    from orchestrator.config import DartsSearchConfig
    from orchestrator.schema import from_dict

    assert DartsSearchConfig().implant == "replace"
    assert from_dict(DartsSearchConfig, {"implant": "residual"}).validate().implant == "residual"
    with pytest.raises(ConfigError) as err:
        from_dict(DartsSearchConfig, {"implant": "adapter"}).validate()
    assert err.value.field == "implant"
    assert str(err.value) == "implant: must be replace or residual, got 'adapter'"


def test_the_cli_flag_refuses_an_unknown_implant(capsys, tmp_path):
    from orchestrator.cli import main

    # the config's check of the field's choices, in the flag's name (argparse only lists them)
    assert main(["search", "darts", "--implant", "adapter", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "medtune: error: --implant: must be replace or residual, got 'adapter'"
    assert not (tmp_path / "run").exists()


def test_stage2_search_cells_follow_the_config():
    from orchestrator.segmentation_data import load_segmentation
    from trainables.darts_trial import run_search

    data = load_segmentation("synthetic", 32, 2, max_cases=4, seed=0)
    unet = _unet(2)
    before = {k: v.clone() for k, v in unet.unet_state_dict().items()}
    _, _, model = run_search(unet, data, {"epochs": 1, "warmup": 1, "batch_size": 64, "k": 2,
                                          "implant": "residual"})
    assert all(isinstance(c, SearchCell) and c.implant == "residual" for c in model.skips)
    assert all(torch.equal(before[k], v) for k, v in model.unet_state_dict().items())


@pytest.mark.parametrize("implant", IMPLANTS)
def test_stage3_factory_and_zoo_builder_rebuild_the_same_form(implant):
    from trainables.darts_trial import build_skip_model, discrete_skip

    unet = _unet(2)
    cells = unet.make_skips(discrete_skip, genotype=GENOTYPE.to_dict(), implant=implant)
    assert all(c.implant == implant for c in cells)
    model = build_skip_model(unet.build, "iac", {"genotype": GENOTYPE.to_dict(), "implant": implant})
    assert all(c.implant == implant for c in model.skips)
    # the default (rows and zoo builds written before the option) stays the paper's form
    assert all(c.implant == "replace" for c in unet.make_skips(discrete_skip, genotype=GENOTYPE.to_dict()))


def test_the_search_threads_implant_into_stage3_runs_and_the_zoo():
    from orchestrator.config import DartsSearchConfig
    from orchestrator.search import RunContext
    from orchestrator.searches.darts import DartsSearch, Stage1Output, Stage2Output, Stage3Output

    cfg = DartsSearchConfig(implant="residual", search_epochs=2, warmup=1, snapshots="2",
                            baselines="attention").validate()
    genotype = GENOTYPE.to_dict()
    ctx = RunContext(search=DartsSearch(), cfg=cfg, data=None, run_id="r", outputs={
        "stage2": Stage2Output([{"backbone": "unet", "epoch": 2, "genotype": genotype}], {})})
    runs = DartsSearch().candidates(ctx)
    iac = [r for r in runs if r["skip"] == "iac"]
    baselines = [r for r in runs if r["skip"] != "iac"]
    assert iac and all(r["skip_kwargs"] == {"genotype": genotype, "implant": "residual"} for r in iac)
    assert baselines and all(r["skip_kwargs"] == {} for r in baselines)  # the baselines are unchanged

    build = _unet(2).build
    stage3 = [{"backbone": "unet", "skip": "iac", "seed": 0, "snapshot_epochs": [2], "genotype": genotype,
               "implant": "residual", "trial_id": "t0", "status": "ok", "val_dice": 0.5},
              {"backbone": "unet", "skip": "attention", "seed": 0, "snapshot_epochs": [], "genotype": None,
               "implant": None, "trial_id": "t1", "status": "ok", "val_dice": 0.4}]
    ctx.outputs.update(stage1=Stage1Output([], {}, unets={"unet": SimpleNamespace(build=build)}),
                       stage3=Stage3Output(stage3))
    iac_rec, att_rec = DartsSearch().zoo_records(ctx)
    assert iac_rec.architecture["implant"] == "residual"
    assert iac_rec.build["kwargs"]["skip_kwargs"] == {"genotype": genotype, "implant": "residual"}
    assert "implant" not in att_rec.architecture and att_rec.build["kwargs"]["skip_kwargs"] == {}
    json.dumps(iac_rec.architecture)  # a zoo row holds it as JSON


def test_summary_json_and_stage3_csv_record_the_implant(tmp_path):
    import pandas as pd

    from orchestrator.config import DartsSearchConfig
    from orchestrator.search import RunContext
    from orchestrator.searches.darts import DartsSearch, Stage1Output, Stage2Output, Stage3Output

    cfg = DartsSearchConfig(out=str(tmp_path), implant="residual", search_epochs=2, warmup=1, snapshots="2",
                            baselines="attention").validate()
    genotype = GENOTYPE.to_dict()
    history = [{"backbone": "unet", "epoch": e, "search_dice": 0.3, "searching": e > 1, "genotype": genotype,
                "alphas": [[0.125] * 8] * 14, "betas": [0.5] * 14} for e in (1, 2)]
    stage3 = [{"backbone": "unet", "skip": "iac", "seed": 0, "snapshot_epochs": [2], "genotype": genotype,
               "implant": "residual", "trial_id": "t0", "status": "ok", "reason": "", "val_dice": 0.5,
               "test_dice": 0.5, "baseline_dice": 0.4, "dice_gain": 0.1, "checkpoint": None},
              {"backbone": "unet", "skip": "attention", "seed": 0, "snapshot_epochs": [], "genotype": None,
               "implant": None, "trial_id": "t1", "status": "ok", "reason": "", "val_dice": 0.45,
               "test_dice": 0.45, "baseline_dice": 0.4, "dice_gain": 0.05, "checkpoint": None}]
    data = SimpleNamespace(info=SimpleNamespace(synthetic=True, flag="synthetic"), describe=lambda: {})
    ctx = RunContext(search=DartsSearch(), cfg=cfg, data=data, run_id="r", outputs={
        "stage1": Stage1Output([{"backbone": "unet", "val_dice": 0.4, "test_dice": 0.4, "best_epoch": 1, "params": 1}],
                               {}, unets={"unet": SimpleNamespace(build=_unet(2).build)}),
        "stage2": Stage2Output(history, {}), "stage3": Stage3Output(stage3)})
    summary = DartsSearch().summarize(ctx)
    assert summary["implant"] == "residual" and summary["config"]["implant"] == "residual"
    table = pd.read_csv(tmp_path / "stage3.csv")
    assert table.set_index("skip")["implant"].to_dict()["iac"] == "residual"
    assert pd.isna(table.set_index("skip")["implant"].to_dict()["attention"])
