"""The YAML experiment spec of ``medtune run``: several searches, their configs and ``after:`` order.

```yaml
storage: results/demo      # optional default for --out (the run folder)
zoo: null                  # optional zoo shared by every search (default <run folder>/zoo)
searches:
  - name: ode_adrenal      # unique, [a-z0-9_-]+; the search's folder is <run folder>/<name>
    type: ode              # a registry name
    after: []              # names (or expanded groups) this search waits for
    dataset: adrenalmnist3d
    data_root: ../orchestrator/sample_data   # relative paths: against the spec file's folder
    fit: {max_epochs: 2}   # any field of the search's config class; nested ones as mappings
  - name: many
    type: compress
    datasets: [breastmnist, pneumoniamnist]  # one search per dataset: many-breastmnist, many-pneumoniamnist
```

Everything is checked before anything starts, and each refusal is one line naming the field
path (``searches[1].budget: must be at least pop_size (20), got 5``). Field types, ranges and
the search's own rules come from its config class (:func:`orchestrator.config.from_dict`,
``validate()``); this module adds names, types, dependencies and the dataset files. ``out``,
``resume`` and ``zoo`` are the coordinator's (each search gets ``<run folder>/<name>``, the
shared zoo, and ``resume`` on ``medtune resume``), and so is ``resources.address``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from medcore.errors import ConfigError, MedtuneError
from orchestrator import registry
from orchestrator.config import from_dict

TOP_LEVEL = ("storage", "zoo", "searches")
ENTRY_KEYS = ("name", "type", "after", "datasets")
# Set by the coordinator, never by the spec: field -> why.
COORDINATOR_FIELDS = {"out": "each search's folder is <run folder>/<name>",
                      "resume": "`medtune resume RUN_DIR` resumes what is unfinished",
                      "zoo": "set the spec's top-level `zoo:` (shared by every search)"}
# Config fields holding a local path, resolved against the spec file's folder when relative.
PATH_FIELDS = ("data_root", "storage", "base_checkpoint")
NAME = re.compile(r"[a-z0-9_-]+")
# Names of run-folder entries a search folder must not take.
RESERVED_NAMES = ("zoo",)


@dataclass
class SearchEntry:
    """One search of the plan: its unique name, registry type, dependencies and validated config.

    ``config`` has the coordinator's fields (``out``, ``zoo``, ``resume``) at their defaults;
    :meth:`run_config` fills them for one run folder."""

    name: str
    type: str
    after: tuple[str, ...]
    config: object
    index: int  # position in the spec's `searches` list (for messages)

    def run_config(self, out: str | Path, zoo: str | Path, resume: bool = False):
        return dataclasses.replace(self.config, out=str(out), zoo=str(zoo), resume=resume)


@dataclass
class Spec:
    path: Path | None  # the spec file (None when parsed from a dict)
    storage: str | None  # default run folder
    zoo: str | None  # shared zoo (default <run folder>/zoo)
    searches: list[SearchEntry]  # dependencies first, otherwise in spec order
    text: str  # the YAML as written

    def entry(self, name: str) -> SearchEntry:
        return next(e for e in self.searches if e.name == name)

    def zoo_path(self, run_dir: str | Path) -> str:
        return self.zoo or str(Path(run_dir).resolve() / "zoo")


def load_spec(path: str | Path, base_dir: str | Path | None = None) -> Spec:
    """Read and check a spec file; relative paths resolve against ``base_dir`` (default: the
    file's folder; ``medtune resume`` passes the folder of the spec the run started from)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read spec file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; a spec lists `searches:`")
    spec = parse_spec(data, base_dir if base_dir is not None else path.resolve().parent)
    spec.path, spec.text = path, text
    return spec


def parse_spec(data, base_dir: str | Path) -> Spec:
    """A :class:`Spec` from the loaded YAML; ``base_dir`` resolves relative paths."""
    base_dir = Path(base_dir)
    if not isinstance(data, dict):
        raise ConfigError(f"a spec is a mapping with `searches:`, got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"unknown key; known keys: {', '.join(TOP_LEVEL)}", str(key))
    storage, zoo = (_path_value(data.get(k), k, base_dir) for k in ("storage", "zoo"))
    items = data.get("searches")
    if not isinstance(items, list) or not items:
        raise ConfigError("must list at least one search", "searches")
    entries: list[SearchEntry] = []
    groups: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        expanded = _entries(item, i, base_dir)
        group = item["name"]
        taken = {e.name for e in entries} | set(groups)
        for e in expanded:
            if e.name in taken:
                raise ConfigError(f"duplicate search name '{e.name}'", f"searches[{i}].name")
        if "datasets" in item:
            if group in taken:
                raise ConfigError(f"duplicate search name '{group}'", f"searches[{i}].name")
            groups[group] = [e.name for e in expanded]
        entries.extend(expanded)
    known = {e.name for e in entries}
    for e in entries:
        resolved: list[str] = []
        for dep in e.after:
            if dep in groups:
                resolved.extend(groups[dep])
            elif dep in known:
                resolved.append(dep)
            else:
                raise ConfigError(f"unknown search '{dep}'", f"searches[{e.index}].after")
        e.after = tuple(dict.fromkeys(resolved))
    return Spec(path=None, storage=storage, zoo=zoo, searches=topological_order(entries), text="")


def _entries(item, i: int, base_dir: Path) -> list[SearchEntry]:
    """The search(es) of ``searches[i]``: one, or one per dataset of ``datasets:``."""
    where = f"searches[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"expected a mapping with name and type, got {type(item).__name__}", where)
    name = item.get("name")
    if name is None:
        raise ConfigError("required", f"{where}.name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"must be lowercase letters, digits, '_' or '-', got {name!r}", f"{where}.name")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is reserved (the run folder's {name}/)", f"{where}.name")
    kind = item.get("type")
    if kind is None:
        raise ConfigError(f"required; known searches: {', '.join(registry.names())}", f"{where}.type")
    if kind not in registry.names():
        raise ConfigError(f"unknown search {kind!r}; known searches: {', '.join(registry.names())}", f"{where}.type")
    after = item.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ConfigError(f"expected a list of search names, got {item.get('after')!r}", f"{where}.after")
    fields = {k: v for k, v in item.items() if k not in ENTRY_KEYS}
    for key, why in COORDINATOR_FIELDS.items():
        if key in fields:
            raise ConfigError(f"set by the coordinator, not the spec ({why}); remove it", f"{where}.{key}")
    if isinstance(fields.get("resources"), dict) and "address" in fields["resources"]:
        raise ConfigError("set by the coordinator (`medtune run --address`); remove it", f"{where}.resources.address")
    for key in PATH_FIELDS:
        if key in fields:
            fields[key] = _path_value(fields[key], f"{where}.{key}", base_dir)
    datasets = item.get("datasets")
    if datasets is not None and _has_field(kind, "datasets"):
        # a search over several datasets at once (mednns): the list is its own field, not a fan-out
        if isinstance(datasets, list) and all(isinstance(d, str) for d in datasets):
            datasets = ",".join(datasets)
        return [_entry(name, kind, after, {**fields, "datasets": datasets}, i, where)]
    if datasets is None:
        return [_entry(name, kind, after, fields, i, where)]
    if "dataset" in fields:
        raise ConfigError("give `dataset` or `datasets`, not both", f"{where}.datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise ConfigError(f"expected a non-empty list of dataset flags, got {datasets!r}", f"{where}.datasets")
    if len(set(datasets)) < len(datasets):
        raise ConfigError(f"lists a dataset twice: {datasets}", f"{where}.datasets")
    out = []
    for j, flag in enumerate(datasets):
        if not NAME.fullmatch(flag):
            raise ConfigError(f"not a MedMNIST flag: {flag!r}", f"{where}.datasets[{j}]")
        out.append(_entry(f"{name}-{flag}", kind, after, {**fields, "dataset": flag}, i, where,
                          dataset_field=f"datasets[{j}]"))
    return out


def _has_field(kind: str, name: str) -> bool:
    import dataclasses

    return any(f.name == name for f in dataclasses.fields(registry.get(kind).config_cls))


def _entry(name: str, kind: str, after: list[str], fields: dict, i: int, where: str,
           dataset_field: str = "dataset") -> SearchEntry:
    cls = registry.get(kind).config_cls
    prefix = f"{where}."
    try:
        cfg = from_dict(cls, fields)
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(exc.render(prefix=prefix)) from None
    for flag in cfg.medmnist_flags():
        check_dataset_file(cfg, prefix, dataset_field, flag)
    return SearchEntry(name=name, type=kind, after=tuple(after), config=cfg, index=i)


def check_dataset_file(cfg, prefix: str = "", dataset_field: str = "dataset", flag: str | None = None) -> Path:
    """The dataset flag (default: ``cfg.dataset``) is known at this size and its file exists (not
    loaded, not downloaded)."""
    from orchestrator.data import default_root, file_name, validate_flag_size

    try:
        flag, size = validate_flag_size(cfg.dataset if flag is None else flag, cfg.size)
    except MedtuneError as exc:
        raise ConfigError(str(exc), prefix + dataset_field) from None
    root = Path(cfg.data_root if cfg.data_root is not None else default_root()).expanduser()
    path = root / file_name(flag, size)
    if not path.is_file():
        field = "data_root" if cfg.data_root is not None else dataset_field
        raise ConfigError(f"dataset file {path} not found; put the file there or set data_root", prefix + field)
    return path


def _path_value(value, field: str, base_dir: Path) -> str | None:
    """A path field: None stays None, a URI stays as written, a relative path joins ``base_dir``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a path, got {value!r}", field)
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def topological_order(entries: list[SearchEntry]) -> list[SearchEntry]:
    """Dependencies first; among searches that are ready together, the spec's order.
    A cycle is refused naming it (``a -> b -> a``)."""
    by_name = {e.name: e for e in entries}
    done: set[str] = set()
    order: list[SearchEntry] = []
    remaining = list(entries)
    while remaining:
        ready = [e for e in remaining if all(d in done for d in e.after)]
        if not ready:
            raise ConfigError(f"dependency cycle {' -> '.join(_cycle(remaining, by_name))}", "searches")
        for e in ready:
            order.append(e)
            done.add(e.name)
        remaining = [e for e in remaining if e.name not in done]
    return order


def _cycle(remaining: list[SearchEntry], by_name: dict) -> list[str]:
    """One cycle among searches none of which can start: follow unmet dependencies until a
    name repeats."""
    left = {e.name for e in remaining}
    path, node = [], remaining[0].name
    while node not in path:
        path.append(node)
        node = next(d for d in by_name[node].after if d in left)
    return path[path.index(node):] + [node]
