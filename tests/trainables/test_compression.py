"""Compression side of the surrogate-CTAEA search: design variables, measurements, trials.

Small MONAI ResNets (basic blocks, 8-64 channels) and tiny synthetic data keep this fast;
the Tune test trains the real ResNet-18 for two epochs and compresses it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import ResNet

from medcore.compression_genome import CompressionGenome
from medcore.errors import ConfigError, MedtuneError
from medcore.networks import RESNET_NAMES
from orchestrator.data import load_medmnist, make_synthetic
from trainables import compress_trial as ct
from trainables import compression as C
from trainables.nets.resnet import RESNETS, build_resnet

NO_COMPRESSION = dict(x1=0, x2=0, x3=50.0, x4=50.0, x5=0, x6=0, x7=0, subset_seed=0)


def tiny_resnet(spatial_dims: int = 2, in_channels: int = 3, n_outputs: int = 8, seed: int = 0) -> ResNet:
    """A 12-conv MONAI ResNet whose every parameter is non-zero (so zeros mean "pruned").

    ``bias_downsample=True`` gives the three projection convs a bias to prune.
    """
    torch.manual_seed(seed)
    model = ResNet("basic", [1, 1, 1, 1], [8, 16, 32, 64], spatial_dims=spatial_dims,
                   n_input_channels=in_channels, num_classes=n_outputs, conv1_t_size=3,
                   conv1_t_stride=1, no_max_pool=True, shortcut_type="B", bias_downsample=True)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + torch.sign(torch.randn_like(p)) * 0.01)
    for m in model.modules():  # positive BN scales keep activations alive through the ReLUs
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.weight.data.abs_()
    return model.eval()


def cfg(**kw) -> CompressionGenome:
    return CompressionGenome.from_config({**NO_COMPRESSION, **kw})


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def blood(tmp_path_factory):
    root = tmp_path_factory.mktemp("blood")
    make_synthetic("bloodmnist", root, n_samples=(64, 32, 32), seed=1)
    return load_medmnist("bloodmnist", 28, root)


# ------------------------------------------------------------------ networks

def test_build_resnet_2d_3d_and_unknown_name():
    assert set(RESNETS) == {"resnet10", "resnet18", "resnet34", "resnet50"}
    assert tuple(RESNETS) == RESNET_NAMES  # the names the config checks without importing MONAI
    r10 = build_resnet("resnet10", 3, 1, 2)
    assert sum(len(getattr(r10, f"layer{i}")) for i in range(1, 5)) == 4  # one basic block per stage
    m2 = build_resnet("resnet18", 2, 3, 8)
    assert m2(torch.rand(2, 3, 28, 28)).shape == (2, 8)
    assert m2.conv1.stride == (1, 1) and m2.no_max_pool  # full-resolution 2D stem
    m3 = build_resnet("ResNet18", 3, 1, 1).eval()
    assert m3(torch.rand(1, 1, 16, 16, 16)).shape == (1, 1)
    assert m3.conv1.stride == (2, 2, 2) and not m3.no_max_pool
    # torchvision-like: no conv biases anywhere
    assert all(m.bias is None for m in m2.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ConfigError, match="resnet10, resnet18, resnet34, resnet50"):
        build_resnet("resnet101", 2, 3, 8)
    with pytest.raises(ConfigError, match="stem"):
        build_resnet("resnet18", 2, 3, 8, stem="wide")


# ------------------------------------------------------------------ pruning (x1..x6)

def test_sparsity_equals_intensity_and_biases_untouched_for_weight_pruning():
    model = tiny_resnet()
    before = params(model)
    report = C.apply_pruning(model, cfg(x1=1, x2=1, x3=62.5, x4=37.5, x5=0, x6=0))
    convs, linears = C.prunable_layers(model, "conv"), C.prunable_layers(model, "linear")
    assert {r["layer"] for r in report} == {n for n, _ in convs + linears}
    for layers, target in ((convs, 0.375), (linears, 0.625)):
        for name, m in layers:
            sparsity = float((m.weight == 0).float().mean())
            assert abs(sparsity - target) <= 0.5 / m.weight.numel() + 1e-9, name
            if m.bias is not None:
                assert torch.equal(m.bias, before[f"{name}.bias"])
            assert not hasattr(m, "weight_orig") and not hasattr(m, "weight_mask")  # permanent
    assert all(r["pruned"] == {"weight": pytest.approx(0.375 if r["kind"] == "conv" else 0.625, abs=0.02)}
               for r in report)


def test_bias_only_pruning_leaves_weights_untouched():
    model = tiny_resnet()
    before = params(model)
    report = C.apply_pruning(model, cfg(x1=1, x2=1, x3=50, x4=50, x5=1, x6=1))
    layers = C.prunable_layers(model, "conv") + C.prunable_layers(model, "linear")
    biased = [m for _, m in layers if m.bias is not None]
    assert biased  # the bias check below is not vacuous
    for name, m in layers:
        assert torch.equal(m.weight, before[f"{name}.weight"]), name
    for m in biased:
        assert abs(float((m.bias == 0).float().mean()) - 0.5) <= 0.5 / m.bias.numel() + 1e-9
    rows = {r["layer"]: r for r in report}
    assert rows["conv1"]["skipped"] == ["bias"] and rows["conv1"]["pruned"] == {}
    assert set(rows["layer2.0.downsample.0"]["pruned"]) == {"bias"}


def test_both_type_prunes_weights_and_biases():
    model = tiny_resnet()
    C.apply_pruning(model, cfg(x1=1, x3=40, x5=2))
    fc = model.fc
    assert abs(float((fc.weight == 0).float().mean()) - 0.4) < 0.01
    assert abs(float((fc.bias == 0).float().mean()) - 0.4) <= 0.5 / fc.bias.numel() + 1e-9


@pytest.mark.parametrize("kw, untouched", [(dict(x1=0, x2=1, x4=70), "linear"),
                                           (dict(x1=1, x2=0, x3=70), "conv")])
def test_scope_zero_leaves_that_layer_type_untouched(kw, untouched):
    model = tiny_resnet()
    before = params(model)
    report = C.apply_pruning(model, cfg(x5=2, x6=2, **kw))
    assert report and all(r["kind"] != untouched for r in report)
    for name, m in C.prunable_layers(model, untouched):
        for t in ("weight", "bias"):
            if getattr(m, t) is not None:
                assert torch.equal(getattr(m, t), before[f"{name}.{t}"])
    other = "conv" if untouched == "linear" else "linear"
    assert any((m.weight == 0).any() for _, m in C.prunable_layers(model, other))


def test_random_subset_is_seeded():
    def pruned(seed):
        model = tiny_resnet()
        report = C.apply_pruning(model, cfg(x2=2, x4=50, subset_seed=seed))
        zeroed = [n for n, m in C.prunable_layers(model, "conv") if (m.weight == 0).any()]
        assert zeroed == [r["layer"] for r in report]
        return tuple(zeroed)

    n_conv = len(C.prunable_layers(tiny_resnet(), "conv"))
    assert n_conv == 12
    subsets = {seed: pruned(seed) for seed in range(6)}
    assert pruned(3) == subsets[3]  # same seed, same layers
    assert len(set(subsets.values())) > 1  # different seeds, different layers
    assert all(1 <= len(s) < n_conv for s in subsets.values())
    # one linear layer: the subset keeps at least one, so it is always the fc
    assert C.select_layers(["fc"], 2, subset_seed=5, stream=0) == ["fc"]


def test_config_validation():
    with pytest.raises(ConfigError, match="x1"):
        CompressionGenome.from_config({**NO_COMPRESSION, "x1": 3})
    with pytest.raises(ConfigError, match="x4"):
        CompressionGenome.from_config({**NO_COMPRESSION, "x2": 1, "x4": 100.0})
    with pytest.raises(ConfigError, match="x7"):
        CompressionGenome.from_config({k: v for k, v in NO_COMPRESSION.items() if k != "x7"})
    with pytest.raises(ConfigError, match="subset_seed"):
        CompressionGenome.from_config({**NO_COMPRESSION, "subset_seed": -1})
    # floats from a real-coded solver are accepted; unused intensities are not checked
    c = CompressionGenome.from_config({**NO_COMPRESSION, "x5": 2.0, "x3": 0.0})
    assert c.x5 == 2 and isinstance(c.x5, int)


# ------------------------------------------------------------------ quantization (x7)

@pytest.mark.parametrize("spatial_dims, size", [(2, 28), (3, 16)])
def test_quantized_model_runs_close_to_float_and_is_smaller(spatial_dims, size):
    model = tiny_resnet(spatial_dims, in_channels=1, n_outputs=3)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, size=(16, 1) + (size,) * spatial_dims, dtype=np.uint8)
    qmodel, quantized, floating = C.quantize(model, calib)
    all_layers = [n for n, _ in C.prunable_layers(model, "linear") + C.prunable_layers(model, "conv")]
    assert sorted(quantized) == sorted(all_layers) and floating == []
    conv_type = "Conv3d" if spatial_dims == 3 else "Conv2d"
    assert type(qmodel.get_submodule("layer1.0.conv2")).__name__ == conv_type
    assert type(qmodel.get_submodule("layer1.0.conv2")).__module__.startswith("torch.ao.nn.quantized")
    x = rng.integers(0, 256, size=(8, 1) + (size,) * spatial_dims, dtype=np.uint8)
    ref, out = C.predict(model, x), C.predict(qmodel, x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    assert C.model_size_mb(qmodel) < 0.5 * C.model_size_mb(model)


def test_engine_is_onednn_where_built_and_qconfig_safe_without_vnni(monkeypatch):
    engines = torch.backends.quantized.supported_engines
    expected = next(e for e in C.ENGINE_PREFERENCE if e in engines)
    assert C.quantized_backend() == expected
    assert C.quantized_backend(["fbgemm", "x86", "onednn"]) == "onednn"
    assert C.quantized_backend(["qnnpack", "fbgemm"]) == "fbgemm"
    assert C.quantized_backend(["qnnpack"]) == "qnnpack"
    with pytest.raises(RuntimeError, match="no int8 CPU engine"):
        C.quantized_backend([])
    # 7-bit activations (x86 qconfig, reduce_range) unless VNNI can take full 8 bits
    monkeypatch.setattr(C, "cpu_has_vnni", lambda: False)
    assert C.qconfig_backend("onednn") == "x86"
    monkeypatch.setattr(C, "cpu_has_vnni", lambda: True)
    assert C.qconfig_backend("onednn") == "onednn"
    assert C.qconfig_backend("x86") == "x86"


@pytest.mark.parametrize("engine", ["onednn", "x86"])
def test_quantize_with_an_explicit_engine_sets_it_for_inference(engine):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"torch build without {engine}")
    model = tiny_resnet(3, in_channels=1, n_outputs=2)
    calib = np.random.default_rng(1).integers(0, 256, size=(8, 1, 16, 16, 16), dtype=np.uint8)
    qmodel, quantized, _ = C.quantize(model, calib, engine=engine)
    assert torch.backends.quantized.engine == engine and "fc" in quantized
    ref, out = C.predict(model, calib), C.predict(qmodel, calib)
    assert float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())


# ------------------------------------------------------------------ measurements

def test_flops_accounting_and_f1_decreases_with_compression(blood):
    model = tiny_resnet()
    total, per_layer = C.layer_flops(model, (3, 28, 28))
    assert total == sum(per_layer.values()) and min(per_layer.values()) > 0
    assert C.accounted_flops(total, per_layer, list(per_layer)) == pytest.approx(total * C.QUANTIZED_FLOP_WEIGHT)
    assert C.accounted_flops(total, per_layer, ["fc"]) == pytest.approx(total - 0.75 * per_layer["fc"])

    f1 = []
    for intensity in (10, 40, 70, 95):
        m = tiny_resnet()
        C.apply_pruning(m, cfg(x1=1, x2=1, x3=intensity, x4=intensity))
        assert C.layer_flops(m, (3, 28, 28))[0] == total  # dense count: pruning acts through the rate
        f1.append(total * C.nonzero_weight_rate(m))
    assert total > f1[0] > f1[1] > f1[2] > f1[3]

    opts = dict(inference_batch=16, inference_repeats=1, calibration_samples=16)
    base = C.evaluate_compression(tiny_resnet(), blood, cfg(), **opts)
    quant = C.evaluate_compression(tiny_resnet(), blood, cfg(x2=1, x4=50, x1=1, x3=50, x7=1), **opts)
    assert base["nonzero_rate"] == 1.0 and base["f1_compute"] == base["flops"] == total
    assert not base["quantized"] and len(base["float_layers"]) == 13 and base["pruned_layers"] == []
    assert quant["nonzero_rate"] == pytest.approx(0.5, abs=0.02)  # BN/bias parameters are few
    assert quant["quantized"] and quant["float_layers"] == [] and len(quant["pruned_layers"]) == 13
    assert quant["flops"] == pytest.approx(total * C.QUANTIZED_FLOP_WEIGHT)
    assert quant["f1_compute"] == pytest.approx(quant["flops"] * quant["nonzero_rate"])
    assert quant["size_mb"] < 0.5 * base["size_mb"] and base["inference_ms"] > 0
    for r in (base, quant):
        conf = np.array(r["confusion"])
        assert conf.shape == (8, 8) and conf.sum() == 32
        assert np.trace(conf) / 32 == pytest.approx(r["accuracy"])


@pytest.mark.parametrize("base_accuracy, feasible", [(0.70, True), (0.78, True), (0.79, False), (0.95, False)])
def test_constraint_and_objectives(blood, monkeypatch, base_accuracy, feasible):
    # accuracy 0.75: feasible iff 0.96 * base <= 0.75, i.e. base <= 0.78125
    monkeypatch.setattr(C, "evaluate_compression",
                        lambda *a, **k: {"accuracy": 0.75, "f1_compute": 4e5, "pruning": []})
    r = ct.evaluate_candidate(tiny_resnet(), blood, NO_COMPRESSION, base_accuracy, 1e6)
    assert r["status"] == "ok" and r["reason"] == "" and "pruning" not in r
    assert r["f2_error"] == pytest.approx(0.25) and r["f1_relative"] == pytest.approx(0.4)
    assert r["g_accuracy"] == pytest.approx(0.96 * base_accuracy - 0.75)
    assert r["accuracy_threshold"] == r["constraint_threshold"] == pytest.approx(0.96 * base_accuracy)
    assert r["feasible"] is feasible and r["synthetic"] is True


@pytest.mark.parametrize("where, exc, x7", [("quantize", RuntimeError("simulated int8 kernel failure"), 1),
                                            ("predict", MemoryError("simulated out of memory"), 0)])
def test_failure_inside_evaluation_is_reported_not_raised(blood, monkeypatch, where, exc, x7):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(C, where, boom)
    r = ct.evaluate_candidate(tiny_resnet(), blood, {**NO_COMPRESSION, "x7": x7}, 0.8, 123.0)
    assert r["status"] == "failed" and str(exc) in r["reason"] and type(exc).__name__ in r["reason"]
    assert (r["f1_compute"], r["f2_error"], r["g_accuracy"], r["feasible"]) == (123.0, 1.0, 1.0, False)
    assert r["accuracy"] == 0.0 and math.isnan(r["inference_ms"])


def test_malformed_config_raises_instead_of_hiding_a_searcher_bug(blood):
    with pytest.raises(ConfigError):
        ct.evaluate_candidate(tiny_resnet(), blood, {**NO_COMPRESSION, "x6": 5}, 0.8, 1.0)


def test_load_base_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(MedtuneError, match="nope.*not found"):
        ct.load_base(missing)
    with pytest.raises(MedtuneError, match="model.pt"):
        ct.load_base(tmp_path)


# ------------------------------------------------------------------ Ray Tune trials

def test_train_base_and_compress_trial_under_tuner(ray_local, blood, tmp_path):
    from ray import tune

    from tests.tune_results import CollectResults

    collect = CollectResults()
    train = tune.Tuner(
        tune.with_resources(tune.with_parameters(ct.train_base, data=blood), {"cpu": 2}),
        param_space={"model": "resnet18", "epochs": 2, "batch_size": 32, "stem": "imagenet", "seed": 0},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="base", verbose=0, callbacks=[collect]),
    ).fit()
    assert not train.errors
    base_result = train[0]
    final = base_result.metrics
    assert final["final"] is True and final["synthetic"] is True and 0 <= final["test_acc"] <= 1
    epochs = [r for r in collect.rows if not r["final"]]
    assert [r["epoch"] for r in epochs] == [1, 2]  # patience defaults to the epoch budget
    assert all({"val_acc", "val_auc", "test_acc", "test_auc", "train_loss"} <= set(r) for r in epochs)
    assert final["best_epoch"] in (1, 2) and final["flops"] > 0
    base = ct.load_base(base_result.checkpoint.path)
    assert base.build["name"] == "resnet18" and base.meta["dataset"]["synthetic"] is True
    assert base.meta["metrics"]["test_acc"] == final["test_acc"]

    # one candidate through the real function: fc + conv pruning and int8 (the float path
    # and the float-vs-int8 comparison are covered above without Ray)
    space = {"x1": 1, "x2": 1, "x3": 30.0, "x4": 40.0, "x5": 2, "x6": 0, "x7": 1, "subset_seed": 1,
             "inference_batch": 16, "inference_repeats": 1, "calibration_samples": 32}
    results = tune.Tuner(
        tune.with_resources(tune.with_parameters(ct.compress_trial, data=blood, base=base,
                                                 base_accuracy=final["test_acc"]), {"cpu": 2}),
        param_space=space,
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="compress", verbose=0),
    ).fit()
    assert not results.errors
    m = results[0].metrics
    assert m["status"] == "ok" and m["reason"] == "" and m["synthetic"] is True
    assert {"accuracy", "f1_compute", "f2_error", "g_accuracy", "feasible", "flops", "nonzero_rate",
            "size_mb", "inference_ms", "quantized", "float_layers", "confusion"} <= set(m)
    assert m["g_accuracy"] == pytest.approx(0.96 * final["test_acc"] - m["accuracy"])
    assert m["feasible"] == (m["g_accuracy"] <= 0) and m["f2_error"] == pytest.approx(1 - m["accuracy"])
    assert np.array(m["confusion"]).sum() == 32
    assert m["quantized"] is True and m["float_layers"] == [] and len(m["pruned_layers"]) == 21
    assert m["nonzero_rate"] < 0.7  # 40 % of conv weights and 30 % of the fc are zero
    assert m["flops"] == pytest.approx(final["flops"] * C.QUANTIZED_FLOP_WEIGHT)
    assert m["f1_compute"] == pytest.approx(m["flops"] * m["nonzero_rate"])
    assert m["size_mb"] < 0.3 * ct.compression.model_size_mb(base.model)


# ------------------------------------------------------------------ one class, the constraint's metric

class _Constant(torch.nn.Module):
    """Logits that call every case class ``k`` of ``n``: the one-class model a short base training gives."""

    def __init__(self, n: int, k: int = 0):
        super().__init__()
        self.n, self.k = n, k
        self.fc = torch.nn.Linear(1, 1)  # something to prune

    def forward(self, x):
        logits = torch.zeros(len(x), self.n)
        logits[:, self.k] = 5.0
        return logits + 0 * self.fc.weight.sum()


def test_balanced_accuracy_follows_sklearn_and_exposes_a_one_class_model():
    from sklearn.metrics import balanced_accuracy_score

    y = np.array([[0], [0], [0], [1], [2], [2]])
    score = np.eye(3)[[0, 0, 1, 1, 2, 0]]
    assert C.balanced_accuracy(y, score, "multi-class") == pytest.approx(
        balanced_accuracy_score(y[:, 0], [0, 0, 1, 1, 2, 0]))
    binary = np.array([[0]] * 9 + [[1]])
    constant = np.full((10, 1), 0.1)  # every case negative: accuracy 0.9, balanced accuracy 0.5
    assert C.balanced_accuracy(binary, constant, "binary-class") == 0.5
    labels = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.9], [0.9, 0.1], [0.1, 0.1], [0.1, 0.9]])
    per_label = [balanced_accuracy_score(labels[:, i], (scores[:, i] > 0.5).astype(int)) for i in range(2)]
    assert C.balanced_accuracy(labels, scores, "multi-label, binary-class") == pytest.approx(np.mean(per_label))


def test_evaluate_compression_counts_the_classes_a_candidate_predicts(blood):
    opts = dict(inference_batch=8, inference_repeats=1)
    one = C.evaluate_compression(_Constant(8, k=3), blood, cfg(x1=1, x3=10), **opts)
    assert one["test_pred_classes"] == 1 and one["balanced_accuracy"] == pytest.approx(1 / 8)
    assert np.array(one["confusion"])[:, 3].sum() == 32  # the whole test split called class 3
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 8)).eval()  # input-dependent
    many = C.evaluate_compression(linear, blood, cfg(), **opts)
    assert many["test_pred_classes"] > 1 and 0 <= many["balanced_accuracy"] <= 1


@pytest.mark.parametrize("metric, base, feasible", [("accuracy", 0.78, True), ("auc", 0.70, False),
                                                    ("auc", 0.60, True), ("balanced_accuracy", 0.55, False),
                                                    ("balanced_accuracy", 0.52, True)])
def test_the_constraint_is_on_the_chosen_metric(blood, monkeypatch, metric, base, feasible):
    # the candidate: accuracy 0.75 (majority share), AUC 0.6, balanced accuracy 0.5
    monkeypatch.setattr(C, "evaluate_compression", lambda *a, **k: {
        "accuracy": 0.75, "auc": 0.6, "balanced_accuracy": 0.5, "f1_compute": 4e5, "pruning": []})
    value = {"accuracy": 0.75, "auc": 0.6, "balanced_accuracy": 0.5}[metric]
    r = ct.evaluate_candidate(tiny_resnet(), blood, NO_COMPRESSION, 0.78, 1e6, metric,
                              None if metric == "accuracy" else base)
    assert r["constraint_metric"] == metric and r["constraint_base"] == pytest.approx(base)
    assert r["g_accuracy"] == pytest.approx(0.96 * base - value)  # the searchers' constraint key
    assert r["constraint_threshold"] == pytest.approx(0.96 * base) and r["feasible"] is feasible
    assert r["f2_error"] == pytest.approx(0.25)  # the objective stays the error (eq. 1)
    assert ("accuracy_threshold" in r) == (metric == "accuracy")


def test_a_constraint_metric_without_the_bases_value_or_unknown_is_refused(blood):
    with pytest.raises(ConfigError, match="needs the base model's auc"):
        ct.evaluate_candidate(tiny_resnet(), blood, NO_COMPRESSION, 0.8, 1.0, "auc")
    with pytest.raises(ConfigError, match="constraint metric must be one of accuracy, auc, balanced_accuracy"):
        ct.evaluate_candidate(tiny_resnet(), blood, NO_COMPRESSION, 0.8, 1.0, "f1", 0.5)
