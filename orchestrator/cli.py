"""``medtune``: the command-line driver. Every command maps onto the same config objects
the Python API takes; bad input ends in one ``medtune: error: ...`` line and exit code 2."""
from __future__ import annotations

import argparse
import json
import sys

from orchestrator.config import CompressSearchConfig, ODESearchConfig
from orchestrator.errors import MedtuneError

# The demo: the real AdrenalMNIST3D sample, a search small enough for 2 CPU cores.
# AUC separates candidates after a few epochs, where accuracy still sits at the majority class.
DEMO = dict(budget=12, pop_size=6, max_epochs=6, patience=3, fraction=0.25, metric="val_auc", top_k=2,
            retrain_epochs=10, max_gflops=0.3, max_concurrent=2)


def _add_run_options(p: argparse.ArgumentParser, out_default: str):
    p.add_argument("--dataset", default="adrenalmnist3d", help="MedMNIST flag, e.g. adrenalmnist3d, bloodmnist")
    p.add_argument("--data-root", help="folder with the MedMNIST npz files (default: $MEDTUNE_DATA or ~/.medmnist)")
    p.add_argument("--size", type=int, default=28, help="image size: 28, 64, 128 or 224")
    p.add_argument("--out", default=out_default, help="folder for tables, plots and summary.json")
    p.add_argument("--storage", help="Tune storage path (default: <out>/tune)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, default=0, help="0: as many trials as the cluster fits")
    p.add_argument("--resume", action="store_true", help="continue the experiment stored under --storage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-jemalloc", dest="jemalloc", action="store_false",
                   help="do not preload Ray's jemalloc in trial workers (it makes CPU training ~2x faster)")


def _add_ode_options(p: argparse.ArgumentParser):
    d = ODESearchConfig()
    p.add_argument("--budget", type=int, default=d.budget, help="candidates to train (paper: 200)")
    p.add_argument("--pop-size", type=int, default=d.pop_size, help="NP (paper: 20)")
    p.add_argument("--F", type=float, default=d.F, help="DE scale factor")
    p.add_argument("--CR", type=float, default=d.CR, help="DE crossover rate")
    p.add_argument("--jump-rate", type=float, default=d.jump_rate, help="JR, generation jumping probability")
    p.add_argument("--fraction", type=float, default=d.fraction, help="train/val fraction during search (paper: 0.25)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="val fraction during search (default: --fraction); 1.0 for small val splits")
    p.add_argument("--max-epochs", type=int, default=d.max_epochs)
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping on val loss")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--metric", default=d.metric, choices=["val_acc", "val_auc"])
    p.add_argument("--top-k", type=int, default=d.top_k, help="architectures retrained on the full train split")
    p.add_argument("--retrain-epochs", type=int, default=0, help="0: same as --max-epochs")
    p.add_argument("--max-gflops", type=float, default=0.0, help="0: no cap; heavier candidates fail untrained")


def _add_compress_options(p: argparse.ArgumentParser):
    d = CompressSearchConfig()
    p.add_argument("--model", default=d.model, help="base network: resnet10, resnet18, resnet34 or resnet50 (paper: resnet50)")
    p.add_argument("--base-checkpoint", help="a trained base (train_base checkpoint folder); default: train one")
    p.add_argument("--train-epochs", type=int, default=d.train_epochs, help="epochs to train the base (MedMNIST: 100)")
    p.add_argument("--searcher", default=d.searcher, choices=["surrogate", "ctaea"],
                   help="surrogate-assisted CTAEA (paper section 3) or pure CTAEA on the real function")
    p.add_argument("--budget", type=int, default=d.budget, help="evaluations of the real function (paper: 100)")
    p.add_argument("--initial", type=int, default=d.initial, help="Latin hypercube initial sample (paper: 50)")
    p.add_argument("--infill", type=int, default=d.infill, help="infill points per iteration (paper: 2)")
    p.add_argument("--ctaea-pop", type=int, default=d.ctaea_pop, help="CTAEA population (pure CTAEA: 20 or 10)")
    p.add_argument("--ctaea-gens", type=int, default=d.ctaea_gens, help="CTAEA generations (pure CTAEA: 5 or 10)")
    p.add_argument("--inference-batch", type=int, default=d.inference_batch, help="batch of the timed CPU inference")
    p.add_argument("--inference-repeats", type=int, default=d.inference_repeats, help="timed runs (median is kept)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtune", description="Medical-imaging NAS and compression on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a small ODE search on the shipped AdrenalMNIST3D sample")
    demo.add_argument("--out", default="results/demo")
    demo.add_argument("--resume", action="store_true")

    search = sub.add_parser("search", help="run a search").add_subparsers(dest="search", required=True)
    ode = search.add_parser("ode", help="opposition-based DE over the 3D cell space")
    _add_run_options(ode, "results/ode")
    _add_ode_options(ode)
    compress = search.add_parser("compress", help="surrogate-assisted CTAEA over pruning + quantization")
    _add_run_options(compress, "results/compress")
    _add_compress_options(compress)

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data", required=True)
    synth = data.add_parser("synth", help="write a SYNTHETIC MedMNIST-format npz (for flags not available offline)")
    synth.add_argument("flag")
    synth.add_argument("--root", required=True)
    synth.add_argument("--size", type=int, default=28)
    synth.add_argument("--n", type=int, nargs=3, default=[96, 32, 32], metavar=("TRAIN", "VAL", "TEST"))
    synth.add_argument("--seed", type=int, default=0)
    check = data.add_parser("check", help="load a dataset and print its splits")
    check.add_argument("flag")
    check.add_argument("--root")
    check.add_argument("--size", type=int, default=28)
    return parser


def _config(cls, args: argparse.Namespace):
    names = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _print_summary(summary: dict):
    if summary.get("synthetic"):
        print("NOTE: results come from SYNTHETIC data")
    best = summary.get("best") or {}
    print(json.dumps({k: summary[k] for k in ("search", "dataset", "synthetic", "n_evaluated") if k in summary}))
    if best:
        print(f"best: {best.get('description', '')} test_acc={best.get('test_acc'):.3f} "
              f"test_auc={best.get('test_auc'):.3f} params={best.get('params')}")
    print(f"results in {summary['out']}")


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from orchestrator.data import SAMPLE_ROOT, SAMPLE_FLAG
        from orchestrator.ode_search import run_ode_search

        cfg = ODESearchConfig(dataset=SAMPLE_FLAG, data_root=str(SAMPLE_ROOT), out=args.out, resume=args.resume,
                              **DEMO)
        summary = run_ode_search(cfg)
        summary["out"] = str(cfg.out_dir)
        _print_summary(summary)
    elif args.command == "search" and args.search == "ode":
        from orchestrator.ode_search import run_ode_search

        cfg = _config(ODESearchConfig, args)
        summary = run_ode_search(cfg)
        summary["out"] = str(cfg.out_dir)
        _print_summary(summary)
    elif args.command == "search" and args.search == "compress":
        from orchestrator.compress_search import run_compress_search

        cfg = _config(CompressSearchConfig, args)
        summary = run_compress_search(cfg)
        if summary.get("synthetic"):
            print("NOTE: results come from SYNTHETIC data")
        print(json.dumps({k: summary[k] for k in ("search", "searcher", "dataset", "synthetic", "n_evaluated",
                                                   "hypervolume")}))
        print(f"base accuracy {summary['base']['accuracy']}, {len(summary['pareto'])} points in D*")
        print(f"results in {cfg.out_dir}")
    elif args.command == "data" and args.data == "synth":
        from orchestrator.data import make_synthetic

        path = make_synthetic(args.flag, args.root, args.size, tuple(args.n), args.seed)
        print(f"wrote SYNTHETIC {path}")
    elif args.command == "data" and args.data == "check":
        from orchestrator.data import load_medmnist

        data = load_medmnist(args.flag, args.size, args.root)
        print(json.dumps({"flag": data.info.flag, "task": data.info.task, "synthetic": data.info.synthetic,
                          "path": data.info.path, "splits": data.sizes(),
                          "shape": list(data.images["train"].shape[1:])}))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except MedtuneError as exc:
        print(f"medtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medtune: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
