"""Real-data compression benchmark: train a 3D ResNet on AdrenalMNIST3D, compress, compare.

Paper (surrogate-ctaea-compression) sections 4.2-4.3 and Fig. 2, without the search: the
shipped AdrenalMNIST3D 28^3 sample (``orchestrator.data.load_sample``, real data) trains a
base network with the MedMNIST recipe (Adam 1e-3, L2 1e-3, batch 128) for a CPU budget of
epochs; then a handful of fixed compression configs (the seven design variables of
section 2.2) are evaluated directly by the trial's real function
(``trainables.compress_trial.evaluate_candidate``) on the test split, on CPU.

Prints base vs compressed test accuracy, feasibility (accuracy >= 0.96 x base), non-zero
weight rate, FLOPs (int8 layers weighted 8/32), f1, size and inference time (batch of
``--inference-batch`` test volumes, median of ``--repeats``) with the speed-up over base.

    .venv/bin/python benchmarks/compress_real.py --epochs 10 --base runs/adrenal_resnet18.pt
    .venv/bin/python benchmarks/compress_real.py --epochs 1 --train-fraction 0.25 --inference-batch 32
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402

from orchestrator.data import load_sample  # noqa: E402
from trainables.complexity import count_flops, count_params  # noqa: E402
from trainables.compress_trial import BASE_DEFAULTS, evaluate_candidate  # noqa: E402
from trainables.fit import DeviceSplit, FitConfig, evaluate, fit  # noqa: E402
from trainables.nets.resnet import build_resnet, default_stem  # noqa: E402

# name -> design variables (section 2.2); intensities in percent.
DEFAULT_CONFIGS = {
    "base (no compression)": dict(x1=0, x2=0, x3=50, x4=50, x5=0, x6=0, x7=0),
    "int8 only": dict(x1=0, x2=0, x3=50, x4=50, x5=0, x6=0, x7=1),
    "prune 20% w (all)": dict(x1=1, x2=1, x3=20, x4=20, x5=0, x6=0, x7=0),
    "prune 20% w (all) + int8": dict(x1=1, x2=1, x3=20, x4=20, x5=0, x6=0, x7=1),
    "prune 50% w (all)": dict(x1=1, x2=1, x3=50, x4=50, x5=0, x6=0, x7=0),
    "prune 50% w (all) + int8": dict(x1=1, x2=1, x3=50, x4=50, x5=0, x6=0, x7=1),
    "subset conv 80% w+b, fc 30% + int8": dict(x1=2, x2=2, x3=30, x4=80, x5=2, x6=2, x7=1),
    "prune 90% conv w + int8": dict(x1=0, x2=1, x3=50, x4=90, x5=0, x6=0, x7=1),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="resnet10 | resnet18 | resnet34 | resnet50")
    p.add_argument("--stem", default=None, help="medmnist | imagenet (default: imagenet in 3D)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=BASE_DEFAULTS["batch_size"])
    p.add_argument("--train-fraction", type=float, default=1.0, help="seeded stratified train subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="training device; compression is always CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--inference-batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calibration-samples", type=int, default=256)
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--configs", type=Path, default=None,
                   help="JSON object name -> {x1..x7}; default: a built-in handful")
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    p.add_argument("--base", type=Path, default=None,
                   help="base weights file: loaded (no training) if it exists, else written after training")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = json.loads(args.configs.read_text()) if args.configs else DEFAULT_CONFIGS
    data = load_sample()
    data = data.subset("train", args.train_fraction, args.seed)
    info = data.info
    label = "SYNTHETIC" if info.synthetic else "real"
    stem = args.stem or default_stem(info.spatial_dims)
    print(f"data: {info.flag} {info.size}^3 ({label}), task {info.task}, splits {data.sizes()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, quantized engine "
          f"{torch.backends.quantized.engine}")

    torch.manual_seed(args.seed)  # seeded initial weights: the base is reproducible
    model = build_resnet(args.model, info.spatial_dims, info.n_channels, info.n_outputs, stem=stem)
    shape = tuple(data.images["test"].shape[1:])
    print(f"model: {args.model} ({stem} stem), {count_params(model) / 1e6:.2f} M params, "
          f"{count_flops(model, shape) / 1e9:.3f} GFLOPs/volume")
    cfg = FitConfig(max_epochs=args.epochs, lr=BASE_DEFAULTS["lr"], weight_decay=BASE_DEFAULTS["weight_decay"],
                    batch_size=args.batch_size, patience=args.epochs, select_metric=BASE_DEFAULTS["select_metric"],
                    seed=args.seed, device=args.device)
    t0 = time.perf_counter()

    def report(row):
        print(f"  epoch {row['epoch']:3d}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
              f"val_acc {row['val_acc']:.4f}  val_auc {row['val_auc']:.4f}  [{time.perf_counter() - t0:.0f} s]",
              flush=True)

    if args.base and args.base.exists():
        model.load_state_dict(torch.load(args.base, map_location="cpu", weights_only=True))
        t = evaluate(model.eval(), DeviceSplit(data.images["test"], data.labels["test"], torch.device("cpu")),
                     info.task)
        base_acc, train_s = t["acc"], 0.0
        print(f"base: loaded {args.base} (not trained here), test_acc {base_acc:.4f}, test_auc {t['auc']:.4f}")
    else:
        result = fit(model, data, cfg, report=report, evaluate_test=True)
        train_s = time.perf_counter() - t0
        base_acc = result.test["test_acc"]
        print(f"base: best epoch {result.best_epoch}/{result.epochs_run}, test_acc {base_acc:.4f}, "
              f"test_auc {result.test['test_auc']:.4f}, trained in {train_s:.0f} s on "
              f"{next(model.parameters()).device}")
        if args.base:
            args.base.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, args.base)
            print(f"saved base weights to {args.base}")

    model = model.cpu().eval()
    base_flops = count_flops(model, shape)
    opts = {"inference_batch": args.inference_batch, "inference_repeats": args.repeats,
            "calibration_samples": args.calibration_samples, "subset_seed": args.subset_seed}
    rows = []
    for name, variables in configs.items():
        t = time.perf_counter()
        r = evaluate_candidate(copy.deepcopy(model), data, {**variables, **opts}, base_acc, base_flops)
        r.update(name=name, variables=variables, eval_s=time.perf_counter() - t)
        rows.append(r)
        print(f"  evaluated {name!r} in {r['eval_s']:.1f} s ({r['status']}{': ' + r['reason'] if r['reason'] else ''})",
              flush=True)

    ref = next((r for r in rows if r["status"] == "ok" and not any(r["variables"].get(k) for k in ("x1", "x2", "x7"))),
               None)
    ref_ms = ref["inference_ms"] if ref else float("nan")
    print(f"\nAdrenalMNIST3D ({label}) {args.model}, {args.epochs} epochs; accuracy threshold "
          f"0.96 x {base_acc:.4f} = {0.96 * base_acc:.4f}; inference: batch {args.inference_batch}, CPU, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    head = (f"{'config':38s} {'acc':>6s} {'feas':>5s} {'nonzero':>7s} {'GFLOPs':>7s} {'f1 (G)':>7s} "
            f"{'f1 rel':>6s} {'MB':>7s} {'ms':>8s} {'speedup':>7s} {'float layers':>12s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['name']:38s} FAILED: {r['reason']}")
            continue
        print(f"{r['name']:38s} {r['accuracy']:6.4f} {str(r['feasible']):>5s} {r['nonzero_rate']:7.4f} "
              f"{r['flops'] / 1e9:7.3f} {r['f1_compute'] / 1e9:7.3f} {r['f1_relative']:6.3f} {r['size_mb']:7.2f} "
              f"{r['inference_ms']:8.1f} {ref_ms / r['inference_ms']:6.2f}x {len(r['float_layers']) if r['quantized'] else '-':>12}")
    for r in rows:
        if r["status"] == "ok":
            print(f"confusion [{r['name']}]: {r['confusion']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"dataset": info.flag, "synthetic": info.synthetic, "model": args.model, "stem": stem,
                "epochs": args.epochs, "train_fraction": args.train_fraction, "base_test_acc": base_acc,
                "train_seconds": train_s, "threads": torch.get_num_threads(),
                "base_weights": str(args.base) if args.base else None}
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=float))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
