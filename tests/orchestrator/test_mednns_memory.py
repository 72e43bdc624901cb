"""The MedNNS memory plan (no Ray): supernet training, zoo extraction and fine-tuning sized before
Ray starts, batches lowered to fit, the planned batch and memory handed to Tune, settings no
node can hold refused; and meta-space training refused when it would not fit this machine."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from medcore.errors import ResourceError
from orchestrator.cli import main
from orchestrator.config import MedNNSSearchConfig
from orchestrator.data import load_medmnist, make_synthetic
from orchestrator.metaspace import MetaSpaceOptions, train_metaspace
from tests.orchestrator.synthetic_zoo import synthetic_zoo
from tests.stage_calls import Stop, capture_run_tuner
from orchestrator.search import RunContext
from orchestrator.searches.mednns import MedNNSSearch, MetaspaceOutput, SupernetsOutput
from trainables import supernet_trial
from trainables.memory import BASELINE_BYTES

GB = 2**30
FLAGS = ("breastmnist", "retinamnist")  # 1 and 3 channels, 2 and 5 classes


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mednns-memory")
    for i, flag in enumerate(FLAGS):
        make_synthetic(flag, root, n_samples=(64, 16, 16), seed=i)
    return root


def context(root, **kw) -> RunContext:
    cfg = MedNNSSearchConfig(datasets=",".join(FLAGS), data_root=str(root), out=str(root / "run"), **kw)
    search = MedNNSSearch()
    return RunContext(search=search, cfg=cfg, data=search.load_data(cfg), run_id="test")


@pytest.fixture(scope="module")
def unlimited(root):
    ctx = context(root)
    return ctx, ctx.search.plan_memory(ctx, None)


def test_every_tune_stage_is_planned_at_its_batch_when_nothing_caps_it(unlimited):
    ctx, plan = unlimited
    assert set(plan) == {"supernets", "zoo", "query"}
    assert plan["supernets"].batch_size == plan["query"].batch_size == 128 and plan["zoo"].batch_size == 256
    assert not any(p.lowered for p in plan.values())
    assert all(p.bytes > BASELINE_BYTES for p in plan.values())
    # the ResNet-18 baseline at 28 px is the heaviest network the query stage trains
    assert plan["query"].bytes > plan["supernets"].bytes > plan["zoo"].bytes


def test_the_elastic_phase_keeps_one_more_gradient_copy(root):
    data = {f: load_medmnist(f, 28, root) for f in FLAGS}
    full_only = supernet_trial.supernet_memory(data, FLAGS, epochs=2, full_epochs=2)
    elastic = supernet_trial.supernet_memory(data, FLAGS, epochs=2, full_epochs=1)
    net = supernet_trial._meta_supernet(supernet_trial._widest(data, FLAGS)[0])
    assert elastic(64) - full_only(64) == 4 * sum(p.numel() for p in net.parameters())


def test_the_data_term_counts_every_received_dataset_once_and_floats_only_the_trials_own(root):
    data = {f: load_medmnist(f, 28, root) for f in FLAGS}
    raw = sum(a.nbytes for d in data.values() for group in (d.images, d.labels) for a in group.values())
    own = data["retinamnist"].images
    assert supernet_trial.received_bytes(data, "retinamnist", ("val", "test")) == \
        raw + 4 * (own["val"].size + own["test"].size)
    # a fine-tuning subset holds that share of the train split
    half = supernet_trial.received_bytes(data, "retinamnist", (), {"retinamnist": 32})
    train = data["retinamnist"]
    assert half == raw - (train.images["train"].nbytes + train.labels["train"].nbytes) // 2


def test_batches_are_halved_until_the_trials_fit(root, unlimited):
    ctx, plan = unlimited
    limit = (plan["query"].bytes + plan["zoo"].bytes) / 2  # below the fine-tuning trial at 128
    lowered = ctx.search.plan_memory(ctx, limit)
    query = lowered["query"]
    assert query.lowered and query.requested_batch == 128 and query.batch_size < 128 and query.bytes <= limit
    assert "lowered from 128 to fit" in query.describe()
    assert not lowered["zoo"].lowered and lowered["zoo"].bytes == plan["zoo"].bytes
    assert all(p.bytes <= limit for p in lowered.values())


def test_a_trial_that_cannot_fit_even_at_batch_two_is_refused_naming_the_settings(root):
    ctx = context(root)
    with pytest.raises(ResourceError, match=r"a supernet training trial \(28 px\) needs .* GB even at batch 2, but "
                                            r"the largest node offers 0.5 GB to Ray; lower --batch-size, --size or "
                                            r"--datasets"):
        ctx.search.plan_memory(ctx, 0.5 * GB)


def test_extraction_is_refused_not_lowered(root, unlimited):
    ctx, plan = unlimited
    limit = plan["zoo"].bytes - 1
    supernet = supernet_trial.supernet_memory(ctx.data, FLAGS, ctx.cfg.supernet_epochs, ctx.cfg.supernet_full_epochs)
    assert supernet(2) < limit  # the supernets would fit lowered: the zoo stage is what refuses
    with pytest.raises(ResourceError, match=r"a zoo extraction trial \(28 px\) needs .* GB at batch 256, but the "
                                            r"largest node offers .* GB to Ray; lower --bn-images, --zoo-size") as e:
        ctx.search.plan_memory(ctx, limit)
    assert "even at batch" not in str(e.value)


@pytest.fixture
def captured(root, unlimited, monkeypatch):
    """A context whose memory plan lowered the batches, and the run_tuner calls its stages make."""
    ctx = context(root)
    _, plan = unlimited
    ctx.memory = ctx.search.plan_memory(ctx, (plan["query"].bytes + plan["zoo"].bytes) / 2)
    calls = capture_run_tuner(ctx, monkeypatch)
    return ctx, calls


def _bundle(kw) -> dict:
    return kw["resources"].bundles[0]


def test_supernets_and_zoo_run_at_their_planned_batch_and_memory(captured):
    ctx, calls = captured
    with pytest.raises(Stop):
        ctx.search.supernets(ctx)
    ctx.outputs["supernets"] = SupernetsOutput(refs={f: "x" for f in FLAGS}, metrics={},
                                               checkpoints={f: None for f in FLAGS})
    with pytest.raises(Stop):
        ctx.search.zoo(ctx)
    (_, supernets), (_, zoo) = calls
    assert supernets["param_space"]["batch_size"] == ctx.memory["supernets"].batch_size
    assert _bundle(supernets)["memory"] == ctx.memory["supernets"].bytes
    assert zoo["param_space"]["bn_batch"] == zoo["param_space"]["eval_batch"] == 256
    assert _bundle(zoo)["memory"] == ctx.memory["zoo"].bytes
    assert _bundle(zoo)["CPU"] == ctx.cfg.resources.cpus_per_trial


class _Space:
    """A meta-space that recommends one supernet subnet."""

    models = [0]

    def query(self, embedding, top_k, exclude_dataset=None):
        build = {"builder": "trainables.nets.ofa_resnet:build_subnet", "kwargs": {"config": {}, "supernet": "x"}}
        return pd.DataFrame({"family": ["ofa_resnet2d"], "build": [json.dumps(build)]})


def test_finetuning_runs_at_the_lowered_batch_with_its_planned_memory(captured):
    ctx, calls = captured
    ctx.outputs["metaspace"] = MetaspaceOutput({}, spaces={f: _Space() for f in FLAGS},
                                               encodings=type("E", (), {"embeddings": {f: None for f in FLAGS}})())
    with pytest.raises(Stop):
        ctx.search.query(ctx)
    (name, kw), = calls
    jobs = kw["param_space"]["job"]["grid_search"]
    assert ctx.memory["query"].lowered
    assert {job["batch_size"] for job in jobs} == {ctx.memory["query"].batch_size}
    assert _bundle(kw)["memory"] == ctx.memory["query"].bytes


# ---- meta-space training: refused before it trains when this machine cannot hold it ----------

@pytest.fixture(scope="module")
def planted():
    return synthetic_zoo(n_datasets=3, models_per_dataset=40, seed=0)


def test_metaspace_training_is_refused_in_one_line_naming_what_to_lower(planted):
    zoo, enc = planted
    with pytest.raises(ResourceError) as e:
        train_metaspace(zoo, enc, MetaSpaceOptions(epochs=1, batch_size=64), memory_limit=2**20)
    message = str(e.value)
    assert "\n" not in message and message.startswith("training the meta-space needs ")
    assert "(120 pairs x " in message and "batch 64" in message and "this machine has 0.0 GB available" in message
    assert message.endswith("lower --batch-size, or train on fewer pairs (a smaller --zoo, --only-encoded, --exclude)")
    # with room it trains (the default limit is the machine's available memory)
    assert len(train_metaspace(zoo, enc, MetaSpaceOptions(epochs=1, batch_size=64)).models) == 120


def test_the_metaspace_estimate_grows_with_the_pairs_and_the_batch():
    from trainables.metaspace_model import metaspace_memory

    small, large = (metaspace_memory(n, 278, 256, 12, MetaSpaceOptions()) for n in (10_000, 720_000))
    assert large - small >= 710_000 * 278 * 4  # the feature matrix
    assert metaspace_memory(10_000, 278, 256, 12, MetaSpaceOptions(batch_size=8192)) > small


def test_cli_metaspace_train_refuses_with_exit_2(planted, tmp_path, monkeypatch, capsys):
    from orchestrator import metaspace
    from orchestrator.zoo import write_rows

    zoo, enc = planted
    enc.save(tmp_path / "enc")
    rows = zoo.to_dict("records")
    for r in rows:
        r["encoding"], r["functional"] = list(r["encoding"]), list(r["functional"])
    (tmp_path / "zoo").mkdir()
    write_rows(tmp_path / "zoo", rows, "synthetic-test")
    monkeypatch.setattr(metaspace, "available_memory", lambda: 2**20)
    assert main(["metaspace", "train", "--zoo", str(tmp_path / "zoo"), "--encodings", str(tmp_path / "enc"),
                 "--out", str(tmp_path / "ms"), "--epochs", "1", "--batch-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtune: error: training the meta-space needs ") and "\n" not in err
    assert "batch 32" in err and "lower --batch-size" in err
    assert not (tmp_path / "ms").exists()
