"""The compression search's memory plan (no Ray): the base network's training trial and the
candidate trials sized before any starts, the base batch lowered to fit, the timed inference
batch never lowered (refused in one line instead), and the stages running at the plan."""
import json
from types import SimpleNamespace

import pytest

from medcore.errors import ResourceError
from orchestrator.config import BaseTrainOptions, CompressSearchConfig
from orchestrator.data import load_sample
from orchestrator.search import RunContext
from orchestrator.searches.compress import BASE_EVAL_NAME, BASE_NAME, SEARCH_NAME, CompressSearch
from trainables.compress_trial import META_FILE, base_build, base_estimate, candidate_estimate

GB = 2**30


@pytest.fixture(scope="module")
def data():
    return load_sample().low_fidelity(0.25, seed=0)


def context(data, **kwargs) -> RunContext:
    cfg = CompressSearchConfig(dataset="adrenalmnist3d", model="resnet10", **kwargs)
    return RunContext(search=CompressSearch(), cfg=cfg, data=data, run_id="test")


def checkpoint_folder(tmp_path, data, model="resnet18"):
    """A --base-checkpoint folder as far as the plan reads it: base.json with the build args."""
    (tmp_path / META_FILE).write_text(json.dumps({"build": base_build(model, data.info)}))
    return str(tmp_path)


def test_estimates_grow_with_the_batch_and_the_network(data):
    small, large = base_build("resnet10", data.info), base_build("resnet50", data.info)
    assert base_estimate(small, data)(2) < base_estimate(small, data)(64) < base_estimate(small, data)(128)
    assert base_estimate(small, data)(64) < base_estimate(large, data)(64)
    cand = candidate_estimate(small, data)
    assert 0 < cand(1) <= cand(128) < cand(512) < cand(1024)
    assert cand(128) < candidate_estimate(large, data)(128)


def test_plan_keeps_the_batches_when_the_node_is_large(data):
    ctx = context(data, inference_batch=64)
    for limit in (None, 256 * GB):
        plan = ctx.search.plan_memory(ctx, limit)
        assert set(plan) == {"base", "search"}
        assert (plan["base"].batch_size, plan["base"].lowered) == (128, False)
        assert (plan["search"].batch_size, plan["search"].lowered) == (64, False)
        build = base_build("resnet10", data.info)
        assert plan["base"].bytes == base_estimate(build, data)(128)
        assert plan["search"].bytes == candidate_estimate(build, data)(64)


def fitting_batch(estimate, limit: float, batch: int = 128) -> int:
    """The batch plan_batch lands on: halved from ``batch`` until the estimate fits."""
    while estimate(batch) > limit:
        batch //= 2
    return batch


def test_plan_lowers_the_base_batch_to_fit(data):
    ctx = context(data, inference_batch=8, fit=BaseTrainOptions(batch_size=128))
    build = base_build("resnet10", data.info)
    base, cand = base_estimate(build, data), candidate_estimate(build, data)
    limit = cand(8)  # the candidates just fit; training the base at 128 does not
    expected = fitting_batch(base, limit)
    assert 2 <= expected < 128
    plan = ctx.search.plan_memory(ctx, limit)
    assert (plan["base"].batch_size, plan["base"].requested_batch, plan["base"].lowered) == (expected, 128, True)
    assert plan["base"].bytes == base(expected) <= limit < base(2 * expected)
    assert "lowered from 128 to fit" in plan["base"].describe()
    assert (plan["search"].batch_size, plan["search"].lowered, plan["search"].bytes) == (8, False, limit)


def test_plan_refuses_a_base_that_fits_at_no_batch(data):
    ctx = context(data)
    with pytest.raises(ResourceError) as err:
        ctx.search.plan_memory(ctx, 0.5 * GB)
    text = str(err.value)
    assert "\n" not in text and text.startswith("training the base network (resnet10, 28 px)")
    assert "even at batch 2" in text and text.endswith("lower --batch-size, --size or --model")


def test_plan_never_lowers_the_inference_batch(data, tmp_path):
    # from --base-checkpoint: no base training trial, the candidates of the checkpoint's network
    ctx = context(data, base_checkpoint=checkpoint_folder(tmp_path, data), inference_batch=1024)
    cand = candidate_estimate(base_build("resnet18", data.info), data)
    plan = ctx.search.plan_memory(ctx, cand(1024))
    assert set(plan) == {"search"} and plan["search"].batch_size == 1024
    assert cand(128) < cand(1024) - 1  # a smaller timed batch would fit: refused all the same
    with pytest.raises(ResourceError) as err:
        ctx.search.plan_memory(ctx, cand(1024) - 1)
    text = str(err.value)
    assert "\n" not in text and text.startswith("a compression candidate (resnet18, 28 px) needs")
    assert "at batch 1024" in text and "even at" not in text and text.endswith("lower --inference-batch or --size")


def test_plan_refuses_a_checkpoint_without_its_build(data, tmp_path):
    from medcore.errors import MedtuneError

    ctx = context(data, base_checkpoint=str(tmp_path))
    with pytest.raises(MedtuneError, match="has no base.json"):
        ctx.search.plan_memory(ctx, None)


class _Stop(Exception):
    pass


def test_stages_run_at_the_planned_batch_and_memory(data, monkeypatch):
    from ray import tune

    import trainables.compress_trial as trial

    ctx = context(data, inference_batch=8, fit=BaseTrainOptions(batch_size=128))
    build = base_build("resnet10", data.info)
    limit = candidate_estimate(build, data)(8)
    lowered = fitting_batch(base_estimate(build, data), limit)
    ctx.memory = ctx.search.plan_memory(ctx, limit)
    assert ctx.memory["base"].batch_size == lowered < 128
    calls, wrapped = {}, {}

    def with_parameters(fn, **kwargs):
        wrapped[fn.__name__] = kwargs
        return fn

    def run_tuner(name, trainable, **kwargs):
        calls[name] = kwargs
        if name == BASE_NAME:
            return [SimpleNamespace(error=None, checkpoint=SimpleNamespace(path="/ckpt"))]
        if name == BASE_EVAL_NAME:
            return [SimpleNamespace(metrics={})]
        raise _Stop

    monkeypatch.setattr(tune, "with_parameters", with_parameters)
    monkeypatch.setattr(trial, "load_base", lambda path: SimpleNamespace(meta={"metrics": {"test_acc": 0.5}}))
    monkeypatch.setattr(ctx, "run_tuner", run_tuner)
    ctx.outputs["base"] = ctx.search.base(ctx)
    with pytest.raises(_Stop):
        ctx.search.search(ctx)

    def memory(resources):
        return [b.get("memory") for b in resources.bundles]

    assert calls[BASE_NAME]["param_space"]["batch_size"] == lowered
    assert memory(calls[BASE_NAME]["resources"]) == [ctx.memory["base"].bytes]
    for name in (BASE_EVAL_NAME, SEARCH_NAME):
        assert memory(calls[name]["resources"]) == [ctx.memory["search"].bytes]
    assert wrapped["compress_trial"]["options"]["inference_batch"] == 8
