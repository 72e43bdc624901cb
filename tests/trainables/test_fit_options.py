"""fit()'s speed options: bf16 autocast where the CPU has it, channels-last where it is measured faster."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from medcore.errors import ConfigError
from trainables import fit as fitmod
from trainables.fit import FitConfig, fit, resolve_channels_last, resolve_precision
from trainables.nets.tiny_cnn import TinyCNN

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synthetic_3d(tmp_path_factory):
    from orchestrator.data import load_medmnist, make_synthetic

    root = tmp_path_factory.mktemp("synth3d")
    make_synthetic("adrenalmnist3d", root, n_samples=(64, 32, 32), seed=0)
    return load_medmnist("adrenalmnist3d", 28, root, download=False)


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(fitmod, "cpu_has_bf16", lambda: True)
    assert resolve_precision(FitConfig(), CPU) is torch.bfloat16
    assert resolve_precision(FitConfig(amp=False), CPU) is None  # amp off: plain fp32, as before
    assert resolve_precision(FitConfig(precision="fp32"), CPU) is None
    monkeypatch.setattr(fitmod, "cpu_has_bf16", lambda: False)  # emulated bf16 is slower than fp32
    assert resolve_precision(FitConfig(), CPU) is None
    assert resolve_precision(FitConfig(precision="bf16"), CPU) is torch.bfloat16  # asked for: given
    assert resolve_precision(FitConfig(), torch.device("cuda")) is torch.float16  # AMP on GPUs, as before


@pytest.mark.parametrize("field, cfg", [("precision", FitConfig(precision="half")),
                                        ("precision", FitConfig(precision="fp16")),
                                        ("memory_format", FitConfig(memory_format="nhwc"))])
def test_unknown_or_unsupported_options_are_refused_naming_the_field(field, cfg):
    with pytest.raises(ConfigError) as e:
        resolve_precision(cfg, CPU) if field == "precision" else resolve_channels_last(cfg, nn.Linear(1, 1), CPU)
    assert e.value.field == field


def test_channels_last_is_chosen_unless_the_model_has_instance_norm():
    plain, with_in = TinyCNN(1, 1, 3), nn.Sequential(nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4))
    assert resolve_channels_last(FitConfig(), plain, CPU) and not resolve_channels_last(FitConfig(), with_in, CPU)
    assert not resolve_channels_last(FitConfig(memory_format="contiguous"), plain, CPU)
    assert resolve_channels_last(FitConfig(memory_format="channels_last"), with_in, CPU)
    assert resolve_channels_last(FitConfig(), with_in, torch.device("cuda"))


def test_bf16_training_follows_fp32_and_keeps_fp32_weights(synthetic_3d):
    """Same seed, same data: bf16 autocast moves the losses by bf16 rounding only; the weights
    and the optimizer stay fp32 and evaluation (the metrics) runs in fp32."""
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = TinyCNN(1, synthetic_3d.info.n_outputs, 3)
        runs[precision] = (fit(net, synthetic_3d, FitConfig(max_epochs=2, batch_size=16, precision=precision),
                               evaluate_test=True), net)
    (a, _), (b, net) = runs["fp32"], runs["bf16"]
    assert all(p.dtype == torch.float32 for p in net.parameters())
    for ra, rb in zip(a.history, b.history):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=0.02)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=0.02)
    assert net.features[0].weight.is_contiguous(memory_format=torch.channels_last_3d)  # auto layout: no IN


def test_a_subset_with_odd_strides_runs_with_row_major_strides():
    """NumPy keeps any stride on a size-1 axis; fit() gives every split row-major strides, so a
    driver-side subset and a trial's copy of it run the same kernels."""
    import numpy as np

    from trainables.fit import DeviceSplit

    full = np.zeros((8, 1, 4, 4, 4), dtype=np.uint8)
    odd = full[:, [0]]  # fancy indexing on the channel axis: a size-1 axis with a foreign stride
    split = DeviceSplit(np.ascontiguousarray(odd), np.zeros((8, 1)), CPU)
    assert split.x.stride() == (64, 64, 16, 4, 1)



def test_a_time_limit_stops_after_the_epoch_that_passes_it(synthetic_3d):
    """``time_limit_s``: an equal-compute budget ends training after the epoch that crosses it
    (the val-selected epoch so far is the result); 0 means no limit."""
    unlimited = fit(TinyCNN(1, 1, 3), synthetic_3d, FitConfig(max_epochs=3, patience=3, precision="fp32"))
    limited = fit(TinyCNN(1, 1, 3), synthetic_3d, FitConfig(max_epochs=3, patience=3, precision="fp32",
                                                              time_limit_s=1e-9))
    assert unlimited.epochs_run == 3 and limited.epochs_run == 1 and limited.best_epoch == 1
