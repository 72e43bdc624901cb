"""Stage outputs: what the driver keeps of each stage (``ctx.outputs``, read with
``ctx.output(cls)``) and writes to ``<out>/stages/<stage>.json``: the persisted fields round-trip
through JSON, runtime fields stay out of the file, and a stage that returns something other than
what it declares is refused."""
import dataclasses
import json
from dataclasses import dataclass

import pytest

from orchestrator.driver import keep_output
from orchestrator.search import RUNTIME, RunContext, Stage, output_to_json, runtime
from tests.orchestrator.toy_search import ToyConfig, ToyOutput, ToySearch


@dataclass
class _WithRuntime:
    ids: list[str]
    model: object = runtime()


def output_from_json(cls: type, data: dict):
    """A ``cls`` stage output from :func:`output_to_json`'s fields (runtime fields at their
    defaults): what a reader of ``stages/<stage>.json`` gets back."""
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if not f.metadata.get(RUNTIME)})


def _ctx(tmp_path):
    return RunContext(search=ToySearch(), cfg=ToyConfig(out=str(tmp_path)), data=None, run_id="toy-1")


def _round_trip(output):
    return output_from_json(type(output), json.loads(json.dumps(output_to_json(output))))


def test_the_driver_keeps_a_stage_output_and_writes_its_json(tmp_path):
    ctx = _ctx(tmp_path)
    output = ToyOutput([{"i": 0, "status": "ok", "reason": ""}, {"i": 1, "status": "failed", "reason": "boom"}])
    keep_output(ctx, Stage("search", None, ToyOutput), output)
    assert ctx.outputs == {"search": output} and ctx.output(ToyOutput) is output
    saved = json.loads((tmp_path / "stages" / "search.json").read_text())
    assert output_from_json(ToyOutput, saved) == output
    with pytest.raises(KeyError, match="no stage has returned a _WithRuntime"):
        ctx.output(_WithRuntime)


def test_runtime_fields_stay_out_of_the_file(tmp_path):
    ctx = _ctx(tmp_path)
    keep_output(ctx, Stage("load", None, _WithRuntime), _WithRuntime(["a"], model=object()))
    assert json.loads((tmp_path / "stages" / "load.json").read_text()) == {"ids": ["a"]}
    back = _round_trip(ctx.output(_WithRuntime))
    assert back == _WithRuntime(["a"]) and back.model is None


def test_a_stage_returning_other_than_it_declares_is_refused(tmp_path):
    ctx = _ctx(tmp_path)
    with pytest.raises(TypeError, match="stage search returned a dict, not a ToyOutput"):
        keep_output(ctx, Stage("search", None, ToyOutput), {"rows": []})
    with pytest.raises(TypeError, match="stage tidy declares no output but returned a ToyOutput"):
        keep_output(ctx, Stage("tidy", None), ToyOutput([]))
    keep_output(ctx, Stage("tidy", None), None)
    assert ctx.outputs == {} and not (tmp_path / "stages").exists()


def test_ode_outputs_round_trip():
    from orchestrator.searches.ode import ODEBaselineOutput, ODERetrainOutput, ODESearchOutput

    record = {"candidate": 0, "generation": 0, "phase": "init", "status": "ok", "reason": "", "fitness": 0.8,
              "genome": [0.1, 0.9], "key": "k", "config": {"architecture": {"n_stacks": 1}}, "metrics": {"val_auc": 0.8},
              "curve": [0.7, 0.8], "fidelity": 2, "trial_id": "t1"}
    for output in (ODESearchOutput(history=[record], best_per_generation=[[0, 0.8]], generation=1, restarts=0,
                                   rungs=[{"epochs": 2, "candidates": 1}], epochs_trained=2, ended="", top=[record]),
                   ODERetrainOutput({'{"n_stacks": 1}': {"report": {"status": "ok", "val_auc": 0.7},
                                                         "weights": "/tmp/ck"}}),
                   ODEBaselineOutput({"status": "failed", "reason": "out of memory"}), ODEBaselineOutput()):
        assert _round_trip(output) == output


def test_compress_outputs_round_trip_without_the_loaded_base():
    from orchestrator.searches.compress import CompressBaseOutput, CompressSearchOutput

    record = {"trial_id": "t0", "iteration": 0, "status": "ok", "reason": "", "feasible": True,
              "config": {"x1": 1, "x3": 10.0}, "constraint": -0.01, "objectives": {"f1_relative": 0.5, "f2_error": 0.1}}
    found = CompressSearchOutput(base_eval={"status": "ok", "accuracy": 0.9, "confusion": [[1, 0], [0, 1]]},
                                 measured={"t0": {"accuracy": 0.88, "float_layers": ["fc"]}}, history=[record],
                                 d_star=[record], hypervolume=0.75)
    assert _round_trip(found) == found
    base = _round_trip(CompressBaseOutput("/runs/base/checkpoint_000003", base=object()))
    assert base == CompressBaseOutput("/runs/base/checkpoint_000003") and base.base is None


def test_mednns_outputs_round_trip_without_runtime_objects():
    from orchestrator.searches.mednns import MetaspaceOutput, QueryOutput, SupernetsOutput, ZooOutput

    supernets = SupernetsOutput(refs={"a": "/t/ck"}, metrics={"a": {"params": 10, "epoch": 2}}, checkpoints={"a": 1})
    assert _round_trip(supernets) == supernets and _round_trip(supernets).checkpoints is None
    metaspace = MetaspaceOutput({"a": "/out/metaspace/a"}, encodings=object(), spaces={}, zoo_rows=object())
    assert _round_trip(metaspace) == MetaspaceOutput({"a": "/out/metaspace/a"})
    query = QueryOutput(["T1", "T5"], {"a": {"model_id": "m1", "source_dataset": "b", "family": "ofa_resnet2d",
                                             "architecture": {"d": [1]}, "score": 0.5}},
                        {"a": {"T1": {"acc_at": {"1": 0.7}, "test_acc_curve": [0.7]}, "T5": {"error": "boom"}}})
    for output in (ZooOutput(12, {"a": {"subnets": 12, "seconds": 1.5, "subnets_per_s": 8.0}}), query):
        assert _round_trip(output) == output


def test_darts_outputs_round_trip_without_the_loaded_unets():
    from orchestrator.searches.darts import Stage1Output, Stage2Output, Stage3Output

    first = Stage1Output([{"backbone": "unet", "val_dice": 0.4, "test_dice": 0.4, "best_epoch": 1, "params": 1,
                           "checkpoint": "/t/ck"}], {"attention_unet": "out of memory"}, unets={"unet": object()})
    assert _round_trip(first) == first and _round_trip(first).unets is None
    second = Stage2Output([{"backbone": "unet", "epoch": 2, "search_dice": 0.3, "searching": True,
                            "genotype": {"edges": [["conv", 0]]}, "alphas": [[0.5, 0.5]], "betas": [0.5]}], {})
    third = Stage3Output([{"backbone": "unet", "skip": "iac", "seed": 0, "snapshot_epochs": [2], "status": "ok",
                           "genotype": {"edges": [["conv", 0]]}, "implant": "replace", "val_dice": 0.5}])
    assert _round_trip(second) == second and _round_trip(third) == third


def test_strategy_outputs_round_trip_without_the_study():
    from orchestrator.searches.strategy import StrategyRetrainOutput, StrategySearchOutput

    row = {"trial_id": "t0", "optuna_number": 0, "optuna_state": "COMPLETE", "status": "ok", "value": 0.8,
           "lr": 0.01, "batch_size": 32, "epochs": 3, "default_recipe": True}
    found = StrategySearchOutput([row], [{"trial_id": "t0", "epoch": 1, "val_auc": 0.7}], study=object())
    assert _round_trip(found) == found and _round_trip(found).study is None
    entry = {"report": {"status": "ok", "test_auc": 0.8}, "weights": "/t/ck", "curve": [{"epoch": 1}]}
    retrain = StrategyRetrainOutput(row, {"default": {"lr": 0.01}, "best": {"lr": 0.01}},
                                    {"default": entry, "best": entry})
    assert _round_trip(retrain) == retrain
