"""``medtune``: the command-line driver.

``medtune search NAME`` exists for every search in the registry, with flags generated from
its config class when NAME is parsed (so ``--help`` imports no search module, and a plugin is
loaded only when it is used); the other commands (zoo, export, run/status/report/resume) come from the
modules in :data:`COMMAND_MODULES`. Flags are never abbreviated (``--max-gflop`` is refused, not
taken for ``--max-gflops``). Bad input ends in one ``medtune: error: ...`` line and exit code 2
before any work starts (a local run also refuses GPUs and memory this machine lacks); a failure
during a run in one line naming the cause, where its traceback is and how to resume (exit 1);
Ctrl+C exits 130 and SIGTERM 143, both with the resume hint. The hint names the command that
continues what started (``--resume`` for a search, ``medtune resume RUN_DIR`` for a run) and is
left out when nothing had started.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

from medcore.errors import ConfigError, MedtuneError
from orchestrator import registry
from orchestrator.config import seed_arg
from orchestrator.schema import add_flags, flag_names, from_dict, from_flags

# Modules that add top-level commands: each has add_commands(subparsers); a command's
# handler(args) -> exit code is set with set_defaults(handler=...).
COMMAND_MODULES = ("orchestrator.zoo_commands", "orchestrator.coordinator.commands",
                   "orchestrator.metaspace_commands")
# An error line quotes at most this much of a message (a user's value can be megabytes).
MAX_LINE = 1000
# The coordinator's files in a run folder (orchestrator.manifest MANIFEST, SPEC_COPY).
RUN_MANIFEST, RUN_SPEC = "run.json", "spec.yaml"


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching: ``--max-gflop`` must not silently mean ``--max-gflops``.
    Every subparser is one too (``add_subparsers`` makes parsers of its parser's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class SearchParser(Parser):
    """The parser of ``medtune search NAME``: its flags (from the config class) and description are
    added when NAME is parsed, ``--help`` included, so listing the searches imports nothing."""

    def __init__(self, *args, search: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.search, self.loaded = search, False

    def parse_known_args(self, args=None, namespace=None):
        if not self.loaded:
            entry = registry.entry(self.search)  # a broken plugin: one ConfigError line
            self.description = entry.description
            add_flags(self, registry.config_cls(self.search))
            self.add_argument("--config-json", help="the whole config as JSON (what `medtune run` passes); "
                                                    "other flags are then ignored")
            self.set_defaults(handler=_search)
            self.loaded = True
        return super().parse_known_args(args, namespace)


def searches_listing() -> str:
    """The searches as ``medtune --help`` lists them (from the registry's entries, nothing imported)."""
    entries = registry.entries()
    width = max(map(len, entries))
    lines = ["searches (`medtune search NAME --help` lists its flags):"]
    lines += [f"  {name:<{width}}  {e.label()}" for name, e in entries.items()]
    skipped = registry.not_registered()
    if skipped:
        lines += ["not registered:"] + [f"  {line}" for line in skipped]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medtune", description="Medical-imaging NAS and compression on Ray Tune.",
                    epilog=searches_listing(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run one search").add_subparsers(dest="search", required=True,
                                                                            parser_class=SearchParser)
    for name, entry in registry.entries().items():
        search.add_parser(name, help=entry.label(), search=name)

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data", required=True)
    synth = data.add_parser("synth", help="write a SYNTHETIC MedMNIST-format npz (for flags not available offline)")
    synth.add_argument("flag")
    synth.add_argument("--root", required=True)
    synth.add_argument("--size", type=int, default=28)
    synth.add_argument("--n", type=int, nargs=3, default=[96, 32, 32], metavar=("TRAIN", "VAL", "TEST"))
    synth.add_argument("--seed", type=seed_arg, default=0)
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
    cls = registry.config_cls(name)
    if args.config_json:
        try:
            data = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError("--config-json is nested too deeply") from None
        return from_dict(cls, data)
    return from_flags(cls, args)


def _search(args) -> int:
    from orchestrator.driver import run_search

    s = registry.get(args.search)
    try:
        cfg = search_config(args.search, args).validate()
        if not (cfg.resources.address or os.environ.get("RAY_ADDRESS")):  # a local Ray on this machine
            cfg.resources.check_machine()
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


def _check_run(args) -> None:
    """``medtune run`` on this machine (no ``--address``, not inside a Ray job): refuse the GPUs and
    memory it lacks before the coordinator makes the run folder (the spec's own checks run
    here too, so they come first)."""
    from orchestrator.runtime import job_cluster_address
    from orchestrator.spec import check_machine, load_spec

    if not (args.address or job_cluster_address()):
        check_machine(load_spec(args.spec))


def _started(args) -> tuple[Path | None, str]:
    """The folder of what this command runs and the hint that continues it: ``(folder, hint)``,
    the hint empty when nothing had started (no manifest yet: there is nothing to resume).

    A search started by ``medtune run`` (``--config-json`` with ``out`` inside a run folder) is
    continued by ``medtune resume RUN_DIR``, as is the run itself; a plain search by ``--resume``."""
    command = getattr(args, "command", None)
    if command == "search":
        out = getattr(args, "out", None)
        if getattr(args, "config_json", None):
            try:
                out = json.loads(args.config_json).get("out")
            except (ValueError, AttributeError, RecursionError):
                out = None
        if not out:
            return None, ""
        folder = Path(out).expanduser().resolve()
        run_dir = folder.parent
        if (run_dir / RUN_MANIFEST).is_file() and (run_dir / RUN_SPEC).is_file():
            return folder, f"`medtune resume {run_dir}` continues the run"
        return folder, "rerun with --resume to continue" if (folder / RUN_MANIFEST).is_file() else ""
    if command in ("run", "resume"):
        out = getattr(args, "out", None) if command == "run" else args.run_dir
        if command == "run" and not out:
            try:
                from orchestrator.spec import load_spec

                out = load_spec(args.spec).storage
            except Exception:  # the spec itself failed: nothing started
                return None, ""
        if not out:
            return None, ""
        run_dir = Path(out).expanduser().resolve()
        return run_dir, f"`medtune resume {run_dir}` continues the run" if (run_dir / RUN_MANIFEST).is_file() else ""
    return None, ""


def _log_traceback(folder: Path | None) -> str:
    """Keep the full traceback of an unexpected error in ``folder`` (the run's, when it exists),
    else in the system temp folder; returns the file's path ('' when it cannot be written)."""
    folder = folder if folder is not None and folder.is_dir() else Path(tempfile.gettempdir())
    path = folder / "medtune-error.log"
    try:
        path.write_text(traceback.format_exc())
    except OSError:
        return ""
    return str(path)


def _line(text: str, limit: int = MAX_LINE) -> str:
    """One line of at most about ``limit`` characters (a message quoting megabytes is cut)."""
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except MedtuneError as exc:  # a search plugin that cannot be loaded
        print(f"medtune: error: {_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    try:
        if args.command == "run":
            _check_run(args)
        return args.handler(args)
    except MedtuneError as exc:
        print(f"medtune: error: {_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from orchestrator.runtime import Terminated, sigterm_received

        terminated = isinstance(exc, Terminated) or sigterm_received()
        what, code = ("terminated", 143) if terminated else ("interrupted", 130)
        _, hint = _started(args)
        then = f"everything evaluated is saved; {hint}" if hint else "nothing had started"
        print(f"medtune: {what}; {then}", file=sys.stderr)
        return code
    except Exception as exc:  # anything else: one line, the cause, where the details are, how to go on
        folder, hint = _started(args)
        log = _log_traceback(folder)
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = f" (traceback in {log})" if log else ""
        then = f"; everything evaluated is saved; {hint}" if hint else ""
        print(f"medtune: error: {_line(f'{type(exc).__name__}: {cause}', 500)}{where}{then}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
