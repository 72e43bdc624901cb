"""fit()'s extension points: optimizer factory, init, augmentation, custom train steps
(accumulation, bilevel), the segmentation task and per-epoch checkpoints with resume."""
import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medcore.errors import ConfigError
from medcore.records import DatasetInfo
from trainables import checkpointing
from trainables.fit import FitConfig, TrainStep, fit
from trainables.tasks import ClassificationTask, SegmentationTask, make_task


def toy_data(n=(96, 32, 32), task="multi-class", n_classes=3, seed=0):
    """8x8 one-channel images whose class is the bright quadrant: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for split, count in zip(("train", "val", "test"), n):
        y = rng.integers(0, n_classes, count)
        x = rng.integers(0, 60, (count, 1, 8, 8))
        for i, c in enumerate(y):
            x[i, 0, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 180
        images[split], labels[split] = x.astype(np.uint8), y[:, None].astype(np.int64)
    info = DatasetInfo(flag="toy", task=task, n_channels=1, n_classes=n_classes, spatial_dims=2, size=8,
                       synthetic=True, path="")
    return SimpleNamespace(info=info, images=images, labels=labels)


def mlp(n_out=3, dropout=0.0):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, n_out))


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_optimizer_factory_and_init_fn_are_used():
    data, calls = toy_data(), []

    def frozen_sgd(params, cfg):
        calls.append(cfg.lr)
        return torch.optim.SGD(params, lr=0.0)

    def init(model):
        for p in model.parameters():
            nn.init.constant_(p, 0.125)

    torch.manual_seed(0)
    net = mlp()
    fit(net, data, FitConfig(max_epochs=2, batch_size=32, lr=0.5), optimizer_factory=frozen_sgd, init_fn=init)
    assert calls == [0.5]
    assert torch.all(weights(net) == 0.125)  # init applied; the factory's lr-0 SGD moved nothing
    fit(net, data, FitConfig(max_epochs=1, batch_size=32))  # the default (Adam) does train
    assert not torch.all(weights(net) == 0.125)


class Recorder(TrainStep):
    """The default step, remembering the batches it trained on."""

    def __init__(self):
        self.xs, self.ys = [], []

    def __call__(self, model, x, y, ctx):
        self.xs.append(x.clone())
        self.ys.append(y.clone())
        return super().__call__(model, x, y, ctx)


def test_augmentation_changes_train_inputs_only_never_eval_inputs_or_labels():
    data, seen_at_eval = toy_data(), []

    def shift(x, y, generator):
        return x + 10.0 + torch.rand(x.shape[0], 1, 1, 1, generator=generator), y

    net = mlp()
    net.register_forward_pre_hook(lambda m, args: None if m.training else seen_at_eval.append(args[0].max()))
    step = Recorder()
    fit(net, data, FitConfig(max_epochs=2, batch_size=32), augment=shift, train_step=step, evaluate_test=True)
    assert len(step.xs) == 2 * 3 and all(float(x.min()) >= 10.0 for x in step.xs)
    epoch1 = torch.cat(step.ys[:3])[:, 0]  # labels pass through untouched: one epoch = the train labels
    assert sorted(epoch1.tolist()) == sorted(data.labels["train"][:, 0].tolist())
    assert seen_at_eval and all(float(m) <= 1.0 for m in seen_at_eval)  # val and test saw raw [0, 1] inputs


class TwoSubnetsOneUpdate(TrainStep):
    """FairNAS-style: m forward/backward passes accumulate gradients, then one optimizer step."""

    def __init__(self, scales=(1.0, 0.5)):
        self.scales, self.forwards, self.steps = scales, 0, 0

    def __call__(self, model, x, y, ctx):
        ctx.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for s in self.scales:
            loss = ctx.loss(model(x) * s, y)
            ctx.backward(loss)
            total += float(loss.detach())
            self.forwards += 1
        ctx.step()
        self.steps += 1
        return total / len(self.scales)


def test_accumulating_step_does_m_backward_passes_and_one_update():
    data = toy_data(n=(32, 16, 16))
    torch.manual_seed(0)
    net, ref = mlp(), mlp()
    ref.load_state_dict(net.state_dict())
    step = TwoSubnetsOneUpdate()
    sgd = lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr)  # noqa: E731
    fit(net, data, FitConfig(max_epochs=1, batch_size=32, lr=0.1), optimizer_factory=sgd, train_step=step)
    assert (step.forwards, step.steps) == (2, 1)
    # the same update by hand: gradient of the summed losses, one SGD step (one batch = whole train split)
    x = torch.from_numpy(data.images["train"]).float() / 255
    y = torch.from_numpy(data.labels["train"])
    task = ClassificationTask("multi-class")
    grads = torch.autograd.grad(sum(task.loss(ref(x) * s, y) for s in (1.0, 0.5)), list(ref.parameters()))
    expected = torch.cat([(p - 0.1 * g).flatten() for p, g in zip(ref.parameters(), grads)])
    # the batch order differs from the split's order; the mean loss does not depend on it
    torch.testing.assert_close(weights(net), expected.detach(), rtol=1e-5, atol=1e-6)


class GatedNet(nn.Module):
    """A 'supernet' with an architecture parameter alpha that mixes two heads (DARTS-like)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(16, 3), nn.Linear(16, 3)])
        self.alpha = nn.Parameter(torch.zeros(2))

    def weight_parameters(self):
        return [p for n, p in self.named_parameters() if n != "alpha"]

    def forward(self, x):
        h, w = self.body(x), torch.softmax(self.alpha, 0)
        return w[0] * self.heads[0](h) + w[1] * self.heads[1](h)


class Bilevel(TrainStep):
    """DARTS' first-order bilevel step: alpha on a val batch, then the weights on the train batch."""

    def setup(self, model, ctx):
        self.arch_opt = torch.optim.Adam([model.alpha], lr=0.05)
        self.val_batches = []

    def __call__(self, model, x, y, ctx):
        xv, yv = ctx.next_batch("val")
        self.val_batches.append((ctx.epoch, yv.clone()))
        self.arch_opt.zero_grad(set_to_none=True)
        ctx.backward(ctx.loss(model(xv), yv))
        ctx.step(self.arch_opt)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss = ctx.loss(model(x), y)
        ctx.backward(loss)
        ctx.step()
        return float(loss.detach())

    def state_dict(self):
        return {"arch_opt": self.arch_opt.state_dict()}

    def load_state_dict(self, state):
        self.arch_opt.load_state_dict(state["arch_opt"])


def test_bilevel_step_draws_val_batches_and_steps_two_optimizers():
    data = toy_data(n=(96, 40, 16))
    torch.manual_seed(0)
    net = GatedNet()
    weight_opt = lambda params, cfg: torch.optim.Adam(net.weight_parameters(), lr=cfg.lr)  # noqa: E731
    step = Bilevel()
    fit(net, data, FitConfig(max_epochs=2, batch_size=32, lr=1e-2), optimizer_factory=weight_opt, train_step=step)
    assert [e for e, _ in step.val_batches] == [1, 1, 1, 2, 2, 2]  # one val batch per train batch
    assert [len(y) for _, y in step.val_batches[:3]] == [32, 8, 32]  # 40 val samples, cycled
    first_pass = torch.cat([y for _, y in step.val_batches[:2]])[:, 0]
    assert sorted(first_pass.tolist()) == sorted(data.labels["val"][:, 0].tolist())
    assert not torch.equal(net.alpha.detach(), torch.zeros(2))  # the architecture was trained


def square_masks(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, 1, size, size))
    masks = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        r, c, s = *rng.integers(0, size - 6, 2), rng.integers(3, 7)
        masks[i, 0, r:r + s, c:c + s] = 1
    x = x + 150 * masks
    return x.astype(np.uint8), masks


def test_segmentation_task_reports_val_dice_and_learns_an_easy_mask():
    split = {name: square_masks(n, seed=i) for i, (name, n) in enumerate((("train", 64), ("val", 24), ("test", 24)))}
    info = DatasetInfo(flag="squares", task="segmentation", n_channels=1, n_classes=1, spatial_dims=2, size=16,
                       synthetic=True, path="")
    data = SimpleNamespace(info=info, images={k: v[0] for k, v in split.items()},
                           labels={k: v[1] for k, v in split.items()})
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    rows = []
    res = fit(net, data, FitConfig(max_epochs=8, batch_size=8, lr=5e-2, patience=8), report=rows.append,
              evaluate_test=True)
    assert all(0.0 <= r["val_dice"] <= 1.0 for r in rows) and "val_acc" not in rows[0]
    assert rows[-1]["best_val_dice"] == max(r["val_dice"] for r in rows)
    assert res.best["val_dice"] > 0.9 and res.best["val_dice"] > rows[0]["val_dice"] + 0.1
    assert set(res.test) == {"test_loss", "test_dice"} and res.test["test_dice"] > 0.9


def test_segmentation_multiclass_dice_and_task_lookup():
    task = make_task("segmentation")
    assert isinstance(task, SegmentationTask) and isinstance(make_task("binary-class"), ClassificationTask)
    y = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    y[:, :, :2] = 1
    y[:, :, 3] = 2
    perfect = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 3, 1, 2).float() * 10
    acc = task.accumulator()
    acc.update(perfect, y)
    assert acc.compute()["dice"] == pytest.approx(1.0)
    assert float(task.loss(perfect, y)) < float(task.loss(-perfect, y))


def test_select_metric_must_be_one_the_task_reports():
    with pytest.raises(ConfigError, match="val_dice"):
        fit(mlp(), toy_data(), FitConfig(max_epochs=1, select_metric="val_dice"))


class Killed(Exception):
    pass


def test_resume_from_an_epoch_checkpoint_is_bit_identical_to_an_uninterrupted_run():
    data = toy_data()
    cfg = FitConfig(max_epochs=4, batch_size=32, lr=1e-2, patience=10, seed=3)
    flip = lambda x, y, g: (torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(-1), x), y)  # noqa: E731
    torch.manual_seed(1)
    straight = mlp(dropout=0.3)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    full = fit(straight, data, cfg, augment=flip, evaluate_test=True)

    saved = {}

    def save_then_die(state, row):
        buf = io.BytesIO()
        torch.save(state, buf)  # what a checkpoint on disk holds
        saved["state"], saved["row"] = buf.getvalue(), row
        if state["epoch"] == 2:
            raise Killed

    first = mlp(dropout=0.3)
    first.load_state_dict(init)
    with pytest.raises(Killed):
        fit(first, data, cfg, augment=flip, evaluate_test=True, save_state=save_then_die)
    assert saved["row"]["epoch"] == 2
    torch.manual_seed(123)  # a fresh process: other global RNG state, other initial weights
    resumed_net = mlp(dropout=0.3)
    state = torch.load(io.BytesIO(saved["state"]), weights_only=True)
    resumed = fit(resumed_net, data, cfg, augment=flip, evaluate_test=True, resume_state=state,
                  init_fn=lambda m: pytest.fail("init_fn runs only on a fresh start"))
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch
    assert resumed.test == full.test
    assert all(torch.equal(a, b) for a, b in zip(resumed_net.state_dict().values(), straight.state_dict().values()))


def test_tune_checkpointing_reports_metrics_and_checkpoint_together(monkeypatch, tmp_path):
    from ray import tune

    reports = []

    def fake_report(metrics, checkpoint=None):
        reports.append((metrics, checkpoint and checkpointing.load_state_file(checkpoint.path)))

    monkeypatch.setattr(tune, "report", fake_report)
    saver = checkpointing.TuneCheckpointing(metrics=lambda row: {**row, "tag": 1}, every=2)
    fit(mlp(), toy_data(), FitConfig(max_epochs=3, batch_size=32, patience=10), save_state=saver)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3] and all(m["tag"] == 1 for m, _ in reports)
    assert [s is not None for _, s in reports] == [False, True, False]
    assert reports[1][1]["epoch"] == 2
    checkpointing.save_state_file(reports[1][1], tmp_path)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path)))
    assert checkpointing.resume_state()["epoch"] == 2
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    assert checkpointing.resume_state() is None


RESUME_CFG = FitConfig(max_epochs=4, batch_size=32, lr=1e-2, patience=10, seed=5)


def _dies_once_at_epoch_2(config):
    """A trial whose worker dies after its epoch-2 checkpoint the first time it runs."""
    torch.set_num_threads(1)
    torch.manual_seed(1)
    saver = checkpointing.TuneCheckpointing()

    def save_then_die(state, row):
        saver(state, row)
        marker = config["marker"]
        if row["epoch"] == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("worker lost")

    fit(mlp(dropout=0.3), toy_data(), RESUME_CFG, save_state=save_then_die,
        resume_state=checkpointing.resume_state())


def test_a_tune_trial_restarted_after_a_failure_resumes_from_its_epoch_checkpoint(ray_local, tmp_path):
    from ray import tune

    grid = tune.Tuner(
        _dies_once_at_epoch_2, param_space={"marker": str(tmp_path / "died")},
        run_config=tune.RunConfig(name="resume", storage_path=str(tmp_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1))).fit()
    result = grid[0]
    m = result.metrics
    assert result.error is None and m["epoch"] == 4
    # one report (with its checkpoint) per epoch; after the restart only epochs 3 and 4 ran
    assert (m["training_iteration"], m["iterations_since_restore"]) == (4, 2)
    assert m["checkpoint_dir_name"] == "checkpoint_000003"
    with result.checkpoint.as_directory() as d:
        final = checkpointing.load_state_file(d)
    torch.set_num_threads(1)
    torch.manual_seed(1)
    straight = mlp(dropout=0.3)
    fit(straight, toy_data(), RESUME_CFG)
    assert all(torch.equal(a, final["model"][k]) for k, a in straight.state_dict().items())
