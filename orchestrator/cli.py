"""``medtune``: the command-line driver.

``medtune search NAME`` exists for every search in the registry, with flags generated from
its config class; the other commands (zoo, export, run/status/report/resume) come from the
modules in :data:`COMMAND_MODULES`. Bad input ends in one ``medtune: error: ...`` line and
exit code 2 before any work starts; a failure during a run in one line naming the cause and
how to resume (exit 1); Ctrl+C exits 130 and SIGTERM 143, both with the resume hint.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import traceback
from pathlib import Path

from medcore.errors import ConfigError, MedtuneError
from orchestrator import registry
from orchestrator.config import add_flags, flag_names, from_dict, from_flags

# Modules that add top-level commands: each has add_commands(subparsers); a command's
# handler(args) -> exit code is set with set_defaults(handler=...).
COMMAND_MODULES = ("orchestrator.zoo_commands", "orchestrator.coordinator", "orchestrator.metaspace_commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtune", description="Medical-imaging NAS and compression on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run one search").add_subparsers(dest="search", required=True)
    for name in registry.names():
        s = registry.get(name)
        p = search.add_parser(name, help=s.description, description=s.description)
        add_flags(p, s.config_cls)
        p.add_argument("--config-json", help="the whole config as JSON (what `medtune run` passes); "
                                             "other flags are then ignored")
        p.set_defaults(handler=_search)

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data", required=True)
    synth = data.add_parser("synth", help="write a SYNTHETIC MedMNIST-format npz (for flags not available offline)")
    synth.add_argument("flag")
    synth.add_argument("--root", required=True)
    synth.add_argument("--size", type=int, default=28)
    synth.add_argument("--n", type=int, nargs=3, default=[96, 32, 32], metavar=("TRAIN", "VAL", "TEST"))
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_data_synth)
    check = data.add_parser("check", help="load a dataset and print its splits")
    check.add_argument("flag")
    check.add_argument("--root")
    check.add_argument("--size", type=int, default=28)
    check.set_defaults(handler=_data_check)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def search_config(name: str, args: argparse.Namespace):
    """The search's config from its flags, or from ``--config-json``."""
    s = registry.get(name)
    if args.config_json:
        try:
            data = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from None
        return from_dict(s.config_cls, data)
    return from_flags(s.config_cls, args)


def _search(args) -> int:
    from orchestrator.driver import run_search

    s = registry.get(args.search)
    try:
        cfg = search_config(args.search, args)
        summary = run_search(s, cfg)
    except ConfigError as exc:
        flags = flag_names(s.config_cls)
        raise MedtuneError(exc.render(lambda path: flags.get(path, path) if not args.config_json else path)) from None
    s.print_summary(summary)
    return 0


def _data_synth(args) -> int:
    from orchestrator.data import make_synthetic

    path = make_synthetic(args.flag, args.root, args.size, tuple(args.n), args.seed)
    print(f"wrote SYNTHETIC {path}")
    return 0


def _data_check(args) -> int:
    from orchestrator.data import load_medmnist

    data = load_medmnist(args.flag, args.size, args.root)
    print(json.dumps({"flag": data.info.flag, "task": data.info.task, "synthetic": data.info.synthetic,
                      "path": data.info.path, "splits": data.sizes(),
                      "shape": list(data.images["train"].shape[1:])}))
    return 0


def _log_traceback(args) -> str:
    """Keep the full traceback of an unexpected error in the run folder (else a temp file)."""
    out = getattr(args, "out", None) or getattr(args, "run_dir", None)
    folder = Path(out) if out and Path(out).is_dir() else Path(tempfile.gettempdir())
    path = folder / "medtune-error.log"
    try:
        path.write_text(traceback.format_exc())
    except OSError:
        return ""
    return str(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MedtuneError as exc:
        print(f"medtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from orchestrator.runtime import Terminated, sigterm_received

        terminated = isinstance(exc, Terminated) or sigterm_received()
        what, code = ("terminated", 143) if terminated else ("interrupted", 130)
        print(f"medtune: {what}; everything evaluated is saved; rerun with --resume to continue", file=sys.stderr)
        return code
    except Exception as exc:  # anything else: one line, the cause, where the details are, how to go on
        log = _log_traceback(args)
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = f" (traceback in {log})" if log else ""
        print(f"medtune: error: {type(exc).__name__}: {cause}{where}; everything evaluated is saved; "
              f"rerun with --resume to continue", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
