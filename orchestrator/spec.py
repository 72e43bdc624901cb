"""The YAML experiment spec of ``medtune run``: several searches, their configs and ``after:`` order.

```yaml
storage: results/demo      # optional default for --out (the run folder)
zoo: null                  # optional zoo shared by every search (default <run folder>/zoo)
searches:
  - name: ode_adrenal      # unique, [a-z0-9_-]+; the search's folder is <run folder>/<name>
    type: ode              # a registry name
    after: []              # names (or expanded groups) this search waits for
    dataset: adrenalmnist3d
    data_root: ../orchestrator/sample_data   # relative paths (any path field): against the spec's folder
    fit: {max_epochs: 2}   # any field of the search's config class; nested ones as mappings
  - name: many
    type: compress
    datasets: [breastmnist, pneumoniamnist]  # one search per dataset: many-breastmnist, many-pneumoniamnist
```

Everything is checked before anything starts, and each refusal is one line naming the field
path (``searches[1].budget: must be at least pop_size (20), got 5``). Field types, ranges and
the search's own rules come from its config class (:func:`orchestrator.schema.from_dict`,
``validate()``); this module adds the file itself (UTF-8, at most :data:`MAX_SPEC_BYTES`, no
key given twice, no more than :data:`MAX_DEPTH` levels, aliases adding at most
:data:`MAX_ALIAS_VALUES` values), names (safe folder names), types, dependencies, the dataset
files, and (:func:`check_machine`) what a local run's machine cannot give. ``out``,
``resume`` and ``zoo`` are the coordinator's (each search gets ``<run folder>/<name>``, the
shared zoo, and ``resume`` on ``medtune resume``), and so is ``resources.address``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from medcore.errors import ConfigError, MedtuneError
from orchestrator import registry
from orchestrator.schema import MAX_STRING, from_dict, key_text, names_path, path_fields, quote

TOP_LEVEL = ("storage", "zoo", "searches")
ENTRY_KEYS = ("name", "type", "after", "datasets")
# Set by the coordinator, never by the spec: field -> why.
COORDINATOR_FIELDS = {"out": "each search's folder is <run folder>/<name>",
                      "resume": "`medtune resume RUN_DIR` resumes what is unfinished",
                      "zoo": "set the spec's top-level `zoo:` (shared by every search)"}
NAME = re.compile(r"[a-z0-9_-]+")
NAME_MAX = 100  # a search name is a folder name, and expanded names add '-<flag>'
# A spec is written by hand: limits that no real spec reaches and that keep a malformed one cheap
# to refuse (PyYAML reads ~1 MB/s; a 563-byte alias bomb expands to a billion values).
MAX_SPEC_BYTES = 1_000_000
MAX_DEPTH = 20  # nested mappings / lists (a spec needs 4: searches, an entry, fit, a value)
MAX_ALIAS_VALUES = 10_000  # values YAML aliases (*name) may add to the spec
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
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"spec file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read spec file {path}: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_SPEC_BYTES // 1000} kB; a spec lists searches and their "
                          f"settings (a few kB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                          f"save it as UTF-8") from None
    try:
        data = _load_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {quote(problem, 200)[1:-1]}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; a spec lists `searches:`")
    spec = parse_spec(data, base_dir if base_dir is not None else path.resolve().parent)
    spec.path, spec.text = path, text
    return spec


def _load_yaml(text: str, path: Path):
    """``yaml.safe_load`` (libyaml's parser where installed) that first refuses, on the composed
    node graph: a key given twice in one mapping (PyYAML keeps the last one silently), nesting
    deeper than :data:`MAX_DEPTH`, an alias inside itself, and aliases adding more than
    :data:`MAX_ALIAS_VALUES` values (a "billion laughs" bomb: a few hundred bytes that expand to
    a billion values once anything walks them)."""
    import yaml

    loader = _loader_class()(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the pure-Python composer recurses once per level
            raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        _check_nodes(node, path)
        try:
            return loader.construct_document(node)
        except ConfigError as exc:  # from the loader's own constructors
            raise ConfigError(f"{path} {exc}") from None
        except (ValueError, OverflowError) as exc:  # e.g. a date YAML reads as a timestamp, out of range
            if isinstance(exc, yaml.YAMLError):
                raise
            raise ConfigError(f"{path}: a value YAML cannot read: {quote(str(exc), 200)[1:-1]}") from None
    finally:
        loader.dispose()


@functools.lru_cache(maxsize=None)
def _loader_class():
    """A SafeLoader (libyaml's when installed: ~5x faster) that refuses an int past Python's
    digit limit in one line naming it."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        def construct_yaml_int(self, node):
            try:
                return super().construct_yaml_int(node)
            except ValueError:
                raise ConfigError(f"(line {node.start_mark.line + 1}): a number of {len(node.value)} "
                                  f"digits; no setting takes one that large") from None

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    return Loader


def _check_nodes(root, path: Path) -> None:
    """One pass over the composed YAML graph (each node once, aliases are shared nodes): the
    refusals of :func:`_load_yaml`, each naming a line."""
    import yaml

    merge = "tag:yaml.org,2002:merge"
    size: dict[int, int] = {}  # values a node stands for once aliases are expanded
    height: dict[int, int] = {}  # nesting levels below and including a node
    visiting: set[int] = set()
    distinct = 0
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            kids = _children(node)
            visiting.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 0 if node.id == "scalar" else 1 + max((height[id(k)] for k in kids), default=0)
            if height[key] > MAX_DEPTH:
                raise ConfigError(f"{path} (line {node.start_mark.line + 1}): nested more than {MAX_DEPTH} "
                                  f"levels deep")
            continue
        if key in size:
            continue
        if key in visiting:
            raise ConfigError(f"{path} (line {node.start_mark.line + 1}): an alias used inside its own anchor")
        visiting.add(key)
        distinct += 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == merge or not isinstance(key_node, yaml.ScalarNode):
                    continue
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise ConfigError(f"{path} (line {key_node.start_mark.line + 1}): key {quote(key_node.value)} "
                                      f"given twice in one mapping (first on line {seen[ident] + 1}); remove one")
                seen[ident] = key_node.start_mark.line
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node))
    if size[id(root)] - distinct > MAX_ALIAS_VALUES:
        raise ConfigError(f"{path}: YAML aliases (*name) expand it by more than {MAX_ALIAS_VALUES} values; "
                          f"write the settings out")


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_spec(data, base_dir: str | Path) -> Spec:
    """A :class:`Spec` from the loaded YAML; ``base_dir`` resolves relative paths."""
    base_dir = Path(base_dir)
    if not isinstance(data, dict):
        raise ConfigError(f"a spec is a mapping with `searches:`, got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"unknown key; known keys: {', '.join(TOP_LEVEL)}", key_text(key))
    storage, zoo = (_path_value(data.get(k), k, base_dir) for k in ("storage", "zoo"))
    items = data.get("searches")
    if not isinstance(items, list) or not items:
        raise ConfigError("must list at least one search", "searches")
    entries: list[SearchEntry] = []
    groups: dict[str, list[str]] = {}
    taken: set[str] = set()  # search and group names so far (one set: a spec of n searches is O(n))
    for i, item in enumerate(items):
        expanded = _entries(item, i, base_dir)
        group = item["name"]
        for e in expanded:
            if e.name in taken:
                raise ConfigError(f"duplicate search name {quote(e.name)} (each search has its own folder)",
                                  f"searches[{i}].name")
        if "datasets" in item:
            if group in taken:
                raise ConfigError(f"duplicate search name {quote(group)} (each search has its own folder)",
                                  f"searches[{i}].name")
            groups[group] = [e.name for e in expanded]
            taken.add(group)
        taken.update(e.name for e in expanded)
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
                raise ConfigError(f"unknown search {quote(dep)}", f"searches[{e.index}].after")
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
    check_name(name, f"{where}.name")
    kind = item.get("type")
    if kind is None:
        raise ConfigError(f"required; known searches: {', '.join(registry.names())}", f"{where}.type")
    if not isinstance(kind, str) or kind not in registry.names():
        raise ConfigError(f"unknown search {quote(kind)}; known searches: {', '.join(registry.names())}",
                          f"{where}.type")
    after = item.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ConfigError(f"expected a list of search names, got {quote(item.get('after'))}", f"{where}.after")
    fields = {k: v for k, v in item.items() if k not in ENTRY_KEYS}
    for key, why in COORDINATOR_FIELDS.items():
        if key in fields:
            raise ConfigError(f"set by the coordinator, not the spec ({why}); remove it", f"{where}.{key}")
    if isinstance(fields.get("resources"), dict) and "address" in fields["resources"]:
        raise ConfigError("set by the coordinator (`medtune run --address`); remove it", f"{where}.resources.address")
    fields = _resolve_paths(_config_cls(kind, where), fields, where, base_dir)
    datasets = item.get("datasets")
    if datasets is not None and _has_field(kind, "datasets", where):
        # a search over several datasets at once (mednns): the list is its own field, not a fan-out
        if isinstance(datasets, list) and all(isinstance(d, str) for d in datasets):
            datasets = ",".join(datasets)
        return [_entry(name, kind, after, {**fields, "datasets": datasets}, i, where)]
    if datasets is None:
        return [_entry(name, kind, after, fields, i, where)]
    if "dataset" in fields:
        raise ConfigError("give `dataset` or `datasets`, not both", f"{where}.datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, str) and d for d in datasets):
        raise ConfigError(f"expected a non-empty list of dataset flags, got {quote(datasets)}", f"{where}.datasets")
    if len(set(datasets)) < len(datasets):
        raise ConfigError(f"lists a dataset twice: {quote(datasets)}", f"{where}.datasets")
    out = []
    for j, flag in enumerate(datasets):
        if not NAME.fullmatch(flag):
            raise ConfigError(f"not a MedMNIST flag: {quote(flag)}", f"{where}.datasets[{j}]")
        if len(name) + 1 + len(flag) > NAME_MAX:
            raise ConfigError(f"the search {quote(name + '-' + flag)} would have a name longer than {NAME_MAX} "
                              f"characters; shorten `name`", f"{where}.datasets[{j}]")
        out.append(_entry(f"{name}-{flag}", kind, after, {**fields, "dataset": flag}, i, where,
                          dataset_field=f"datasets[{j}]"))
    return out


def check_name(name, field: str) -> None:
    """A search name becomes its folder's name: lowercase letters, digits, '_' and '-', not starting
    with '-' (it would read as a flag), at most :data:`NAME_MAX` characters, not a reserved entry of
    the run folder. So no '/', '\\', '.', '..' or control character reaches a path."""
    if not isinstance(name, str):
        raise ConfigError(f"expected a name, got {quote(name)}", field)
    if len(name) > NAME_MAX:
        raise ConfigError(f"at most {NAME_MAX} characters (it names a folder), got {quote(name)}", field)
    if not NAME.fullmatch(name):
        raise ConfigError(f"must be lowercase letters, digits, '_' or '-', got {quote(name)}", field)
    if name.startswith("-"):
        raise ConfigError(f"must not start with '-' (it would read as a command-line flag), got {quote(name)}", field)
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is reserved (the run folder's {name}/)", field)


def check_machine(spec: Spec) -> None:
    """Refuse, before anything starts, what no trial of a run on this machine can get: GPUs it
    lacks (``gpus_per_trial > 0`` without one), more memory per trial than it has. For runs on
    this machine only (``medtune run`` without ``--address``): a cluster's nodes are checked by
    each search once it has joined."""
    from orchestrator.config import local_gpu_count, local_memory_bytes

    asks = [e for e in spec.searches if not e.config.resources.autoscale]
    gpus = local_gpu_count() if any(e.config.resources.gpus_per_trial > 0 for e in asks) else 0
    memory = local_memory_bytes() if any(e.config.resources.memory_per_trial_gb > 0 for e in asks) else 0
    for e in asks:
        try:
            e.config.resources.check_machine(gpus=gpus, memory=memory)
        except ConfigError as exc:
            raise ConfigError(exc.render(prefix=f"searches[{e.index}].")) from None


def _config_cls(kind: str, where: str) -> type:
    """The config class of search ``kind`` (a built-in's imports no search module; a plugin that
    cannot be loaded is an error at ``<where>.type``)."""
    try:
        return registry.config_cls(kind)
    except ConfigError as exc:
        raise ConfigError(str(exc), f"{where}.type") from None


def _has_field(kind: str, name: str, where: str) -> bool:
    import dataclasses

    return any(f.name == name for f in dataclasses.fields(_config_cls(kind, where)))


def _entry(name: str, kind: str, after: list[str], fields: dict, i: int, where: str,
           dataset_field: str = "dataset") -> SearchEntry:
    cls = _config_cls(kind, where)
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


def _resolve_paths(cls, fields: dict, where: str, base_dir: Path) -> dict:
    """``fields`` with each path field of ``cls`` (:func:`orchestrator.schema.path_fields`) that
    names a path resolved by :func:`_path_value`, a nested one (``fit.x``) inside its mapping.
    Mappings are copied, never changed (``datasets:`` entries share them); a nested section
    that is no mapping is left to :func:`from_dict` to refuse."""
    out = dict(fields)
    for path in path_fields(cls):
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            if leaf in node and names_path(cls, path, node[leaf]):
                node[leaf] = _path_value(node[leaf], f"{where}.{path}", base_dir)
    return out


def _path_value(value, field: str, base_dir: Path) -> str | None:
    """A path field: None stays None, a URI stays as written, a relative path joins ``base_dir``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a path, got {quote(value)}", field)
    if len(value) > MAX_STRING:
        raise ConfigError(f"longer than {MAX_STRING} characters: {quote(value)}", field)
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def topological_order(entries: list[SearchEntry]) -> list[SearchEntry]:
    """Dependencies first; among searches that are ready together, the spec's order: waves of
    searches whose dependencies all lie in earlier waves (Kahn's algorithm, linear in the
    searches and their dependencies). A cycle is refused naming it (``a -> b -> a``)."""
    by_name = {e.name: e for e in entries}
    position = {e.name: i for i, e in enumerate(entries)}
    waiting = {e.name: len(set(e.after)) for e in entries}
    dependents: dict[str, list[str]] = {}
    for e in entries:
        for d in set(e.after):
            dependents.setdefault(d, []).append(e.name)
    order: list[SearchEntry] = []
    wave = [e.name for e in entries if not waiting[e.name]]
    while wave:
        order.extend(by_name[n] for n in wave)
        ready = []
        for n in wave:
            for child in dependents.get(n, ()):
                waiting[child] -= 1
                if not waiting[child]:
                    ready.append(child)
        wave = sorted(ready, key=position.__getitem__)
    if len(order) < len(entries):
        done = {e.name for e in order}
        remaining = [e for e in entries if e.name not in done]
        raise ConfigError(f"dependency cycle {' -> '.join(_cycle(remaining, by_name))}", "searches")
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
