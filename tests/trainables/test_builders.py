"""Builder names (trainables.builders): every name builds, legacy paths still resolve, and a zoo
written with main's ``module:function`` builders still loads, shows names and rebuilds its models."""
import argparse
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from medcore.errors import ConfigError, MedtuneError
from trainables import builders
from trainables.builders import BUILDERS, LEGACY, UnknownBuilder, normalise, resolve

CELL = {"nodes": [[1, "conv3_in_relu"], [2, "mish_conv3"]], "edges": [[0, 1], [0, 6], [1, 2], [2, 6]],
        "n_stacks": 1, "n_modules": 1, "n_f_init": 4}
COMMON = {"in_channels": 1, "n_outputs": 2, "spatial_dims": 2}
UNET = {"backbone": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "features": [4, 4, 8, 8, 8, 4]}


def small_kwargs(name: str) -> tuple[dict, tuple]:
    """Keyword arguments of a small network of builder ``name`` and an input it takes."""
    from trainables.nets.ofa_resnet import OFASpace

    return {
        "cell_net": ({"architecture": CELL, **COMMON}, (2, 1, 16, 16)),
        "baseline": ({"name": "tiny_cnn", **COMMON}, (2, 1, 16, 16)),
        "tiny_cnn": (COMMON, (2, 1, 16, 16)),
        "resnet": ({"name": "resnet10", **COMMON}, (2, 1, 28, 28)),
        "strategy_model": ({"net": {"builder": "tiny_cnn", "kwargs": COMMON}, "norm": "instance", "dropout": 0.1,
                            "spatial_dims": 2}, (2, 1, 16, 16)),
        "ofa_subnet": ({"config": OFASpace().smallest().to_dict(), **COMMON, "size": 28}, (2, 1, 28, 28)),
        "unet": ({"build": UNET}, (2, 1, 32, 32)),
        "darts_skip_model": ({"unet_build": UNET, "skip": "attention"}, (2, 1, 32, 32)),
    }[name]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_name_resolves_and_builds_a_network(name):
    kwargs, shape = small_kwargs(name)
    torch.manual_seed(0)
    model = builders.build({"builder": name, "kwargs": kwargs})
    assert isinstance(model, nn.Module) and sum(p.numel() for p in model.parameters()) > 0
    with torch.no_grad():
        out = model.eval()(torch.rand(*shape))
    assert out.shape[0] == shape[0] and torch.isfinite(out).all()


@pytest.mark.parametrize("path", sorted(LEGACY))
def test_a_legacy_path_resolves_to_its_names_function(path):
    module, function = path.split(":")
    expected = getattr(__import__(module, fromlist=[function]), function)
    assert LEGACY[path] in BUILDERS and resolve(path) is resolve(LEGACY[path]) is expected
    assert builders.name_of(path) == LEGACY[path]


def test_an_unknown_path_that_imports_is_accepted_and_unknown_names_fail_in_one_line():
    assert resolve("torch.nn:Identity") is nn.Identity and builders.name_of("torch.nn:Identity") == "torch.nn:Identity"
    known = "known builders: " + ", ".join(sorted(BUILDERS))
    with pytest.raises(UnknownBuilder) as exc:
        resolve("celnet")
    assert str(exc.value) == f"unknown builder 'celnet'; {known}"
    with pytest.raises(MedtuneError) as exc:  # a module that moved away: the path no longer imports
        resolve("trainables.gone:build_network")
    text = str(exc.value)
    assert "\n" not in text and text.startswith("unknown builder 'trainables.gone:build_network' (it does not import")
    assert text.endswith(known)
    with pytest.raises(UnknownBuilder, match="needs a builder name"):
        builders.build({"kwargs": {}})


def test_the_callers_name_their_context():
    from orchestrator.export import build_model
    from trainables.strategy_trial import call_builder

    with pytest.raises(ConfigError) as exc:
        call_builder({"builder": "nope", "kwargs": {}})
    assert exc.value.field == "from_zoo" and "unknown builder 'nope'; known builders:" in str(exc.value)
    with pytest.raises(MedtuneError, match=r"^cannot rebuild the model from .*unknown builder 'nope'; known"):
        build_model({"builder": "nope"})


def test_producers_write_names():
    from orchestrator.searches import compress, mednns
    from trainables import ode_trial, strategy_trial
    from orchestrator.data import load_sample

    assert {ode_trial.BUILDER, ode_trial.BASELINE_BUILDER, strategy_trial.BUILDER, mednns.BUILDER,
            compress.BASE_BUILDER} <= set(BUILDERS)
    assert ode_trial.builder_of({"baseline": "tiny_cnn"}) == "baseline"
    info = load_sample().info
    for model in strategy_trial.MODELS:
        assert strategy_trial.network_build(model, info)["builder"] in BUILDERS
    legacy_net = {"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": COMMON}
    from trainables.strategy import Strategy

    build = strategy_trial.zoo_build(legacy_net, Strategy(), 2)  # a --from-zoo net of an older zoo
    assert build["builder"] == "strategy_model" and build["kwargs"]["net"]["builder"] == "tiny_cnn"


def test_importing_the_table_stays_light():
    code = "import sys, trainables.builders; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- migration: a zoo written the way main writes it (builders as import paths) -----------------

def main_zoo(tmp_path):
    """A zoo as main's code writes it: each producer's ``module:function`` builder, weights in ``model.pt``."""
    from medcore.records import ModelRecord
    from orchestrator import zoo

    cell = {"architecture": CELL, **COMMON}
    tiny = {"builder": "trainables.nets.tiny_cnn:TinyCNN", "kwargs": COMMON}
    recipes = {
        "cell": {"builder": "trainables.ode_trial:build_network", "kwargs": cell},
        "base": {"builder": "trainables.ode_trial:build_baseline", "kwargs": {"name": "tiny_cnn", **COMMON}},
        "strategy": {"builder": "trainables.strategy_trial:build_model",
                     "kwargs": {"net": tiny, "norm": "instance", "dropout": 0.0, "spatial_dims": 2}},
    }
    models, recs = {}, []
    for i, (key, build) in enumerate(recipes.items()):
        torch.manual_seed(i)
        models[key] = builders.build(build).eval()
        (tmp_path / key).mkdir()
        torch.save(models[key].state_dict(), tmp_path / key / "model.pt")
        recs.append(ModelRecord(search="ode", stage="retrain", family="cell2d", architecture={"key": key},
                                encoding=[float(i)], status="ok", metrics={"val_auc": 0.6 + i / 10},
                                build=build, weights=str(tmp_path / key), trial_id=key))
    rows = zoo.rows_from_records(recs, dataset="breastmnist", size=16, spatial_dims=2, task="binary-class",
                                 input_shape=(1, 16, 16), run="main", synthetic=True)
    zoo.write_rows(tmp_path / "zoo", rows, "main-ode-retrain")
    return tmp_path / "zoo", {key: r["model_id"] for key, r in zip(recipes, rows)}, recipes, models


def test_a_zoo_written_by_main_still_loads_shows_names_and_rebuilds(tmp_path, capsys):
    from orchestrator import zoo
    from orchestrator.export import build_model, read_state_dict
    from orchestrator.zoo_commands import add_commands

    path, ids, recipes, models = main_zoo(tmp_path)
    df = zoo.read_zoo(path)
    assert len(df) == 3  # the files are read as written: their paths are never rewritten
    assert {json.loads(b)["builder"] for b in df["build"]} == {r["builder"] for r in recipes.values()}

    parser = argparse.ArgumentParser(prog="medtune")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["zoo", "show", ids["strategy"], "--zoo", str(path)])
    assert args.handler(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["build"]["builder"] == "strategy_model" and shown["build"]["kwargs"]["net"]["builder"] == "tiny_cnn"
    assert zoo.row_json(zoo.get_model(path, ids["cell"]))["build"]["builder"] == "cell_net"

    x = torch.rand(2, 1, 16, 16)
    for key, model_id in ids.items():
        row = zoo.get_model(path, model_id)
        rebuilt = build_model(json.loads(row["build"]))
        rebuilt.load_state_dict(read_state_dict(row["weights"]))
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(x), models[key](x))
        # the normalised recipe (what cards and new rows hold) rebuilds the same network
        named = normalise(json.loads(row["build"]))
        assert named["builder"] in BUILDERS and resolve(named["builder"]) is resolve(recipes[key]["builder"])
