"""The training-memory estimate: simulated on meta, monotone, and above a measured peak."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from trainables import memory
from trainables.nets.tiny_cnn import TinyCNN

SHAPE = (1, 16, 16, 16)


def tiny(widths=(8, 16, 32)):
    return lambda: TinyCNN(1, 1, spatial_dims=3, widths=widths)


def test_estimate_grows_with_batch_size_channels_and_data():
    by_batch = [memory.estimate_training_bytes(tiny(), SHAPE, b) for b in (8, 16, 32, 64)]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
    by_width = [memory.estimate_training_bytes(tiny(w), SHAPE, 32) for w in ((4, 8, 16), (8, 16, 32), (16, 32, 64))]
    assert by_width == sorted(by_width) and len(set(by_width)) == 3
    with_data = memory.estimate_training_bytes(tiny(), SHAPE, 32, n_train=100)
    assert with_data - by_batch[2] == 100 * 16**3 * 5  # uint8 images + their float32 copy
    params = memory.parameter_bytes(tiny())
    assert memory.estimate_training_bytes(tiny(), SHAPE, 32, checkpoint=True) - by_batch[2] == 4 * params


def test_training_peak_holds_saved_activations_and_eval_peak_does_not():
    train = memory.simulate_peak_bytes(tiny(), SHAPE, 32, train=True)
    evaluation = memory.simulate_peak_bytes(tiny(), SHAPE, 32, train=False)
    first_conv_output = 32 * 8 * 16**3 * 4
    assert train > 3 * first_conv_output > evaluation  # conv, BN and ReLU outputs are kept for backward


def test_a_built_module_is_estimated_on_meta_and_left_untouched():
    torch.manual_seed(0)
    net = tiny()()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert memory.estimate_training_bytes(net, SHAPE, 16) == memory.estimate_training_bytes(tiny(), SHAPE, 16)
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in net.state_dict().items())


CHILD = textwrap.dedent("""
    import json, re, numpy as np, torch
    from types import SimpleNamespace
    from medcore.records import DatasetInfo
    from trainables.fit import FitConfig, fit
    from trainables.nets.tiny_cnn import TinyCNN

    class LossOnly:  # BCE without ACC/AUC, so the child need not import medmnist (seconds)
        metric_names, select_metric = (), "val_loss"
        def loss(self, logits, y):
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float())
        def accumulator(self):
            return SimpleNamespace(update=lambda logits, y: None, compute=dict)

    def peak_rss():  # VmHWM: this process's own peak (ru_maxrss also counts the parent's, inherited at fork)
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    sizes = {"train": 128, "val": 32, "test": 32}
    info = DatasetInfo("toy3d", "binary-class", 1, 2, 3, 28, True, "")
    data = SimpleNamespace(info=info, images={k: rng.integers(0, 256, (n, 1, 28, 28, 28), dtype=np.uint8)
                                              for k, n in sizes.items()},
                           labels={k: rng.integers(0, 2, (n, 1)) for k, n in sizes.items()})
    net = TinyCNN(1, 1, 3)
    torch.optim.Adam(net.parameters())  # the first optimizer imports torch._dynamo (~70 MB)
    # one-time runtime set-up (the baseline's share: conv/autograd engines, thread pools) on a tiny
    # batch, so that what fit() adds below is the model's own cost
    warm = TinyCNN(1, 1, 3)
    warm(torch.zeros(2, 1, 8, 8, 8)).sum().backward()
    before = peak_rss()
    fit(net, data, FitConfig(max_epochs=1, batch_size=64), evaluate_test=True, task=LossOnly())
    print(json.dumps({"before": before, "peak": peak_rss()}))
""")


def test_estimate_covers_the_measured_peak_of_a_small_3d_model():
    from orchestrator.runtime import JEMALLOC_CONF, jemalloc_path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), MALLOC_CONF=JEMALLOC_CONF)
    if jemalloc_path():
        env["LD_PRELOAD"] = jemalloc_path()  # as trial workers run
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    est = memory.estimate_memory(tiny(), (1, 28, 28, 28), 64, n_train=128, n_eval=64)
    assert est.total >= measured["peak"]
    # the terms beyond the baseline cover what training added to the process (the data arrays
    # already exist before fit(); their float copies do not)
    assert est.total - est.baseline >= measured["peak"] - measured["before"]
    assert est.total - est.baseline <= 3 * (measured["peak"] - measured["before"]) + 2 * est.data
