"""Connecting to Ray (``--address`` / ``ray job submit`` / a local Ray) and checking that the
cluster can run what a search asks of it."""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

from medcore.errors import ResourceError

JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_path() -> str | None:
    """Ray's bundled jemalloc, if this Ray build ships it."""
    import ray

    path = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return str(path) if path.exists() else None


def worker_env(jemalloc: bool) -> dict:
    """Environment for trial workers. jemalloc with decay off keeps freed pages mapped, which
    removes most page-fault time of CPU training under glibc malloc (benchmarks/jemalloc.py)."""
    env = {"PYTHONUNBUFFERED": "1"}
    lib = jemalloc_path() if jemalloc else None
    # without it, also drop a preload the workers would inherit (`make` preloads it for the driver)
    env.update({"LD_PRELOAD": lib, "MALLOC_CONF": JEMALLOC_CONF} if lib else {"LD_PRELOAD": "", "MALLOC_CONF": ""})
    return env


TOKEN_MODE = "token"


def token_auth() -> bool:
    """Whether this process and the run's Ray processes use token auth (Ray 2.60's default)."""
    return os.environ.get("RAY_AUTH_MODE", TOKEN_MODE).lower() == TOKEN_MODE


def default_token_path() -> Path:
    """Where Ray reads the token when neither ``RAY_AUTH_TOKEN`` nor ``RAY_AUTH_TOKEN_PATH`` is set."""
    return Path.home() / ".ray" / "auth_token"


def ensure_auth_token() -> Path | None:
    """Make the token a new local Ray node needs, the way ``ray.init()`` would, if none exists.

    ``ray.init()`` creates ``~/.ray/auth_token`` when token auth is on and no token is found;
    ``ray start --head`` does not and fails, so on a machine where no ``ray.init`` ever ran the
    coordinator's node could not start. The token is 256 random bits (Ray's own generator)
    written with mode 0600 in a 0700 folder. Returns the path written, or None when a token was
    already given (``RAY_AUTH_TOKEN``, an existing file) or token auth is off. A
    ``RAY_AUTH_TOKEN_PATH`` naming a missing file is refused: it names a token someone meant to give.
    """
    from medcore.errors import ConfigError

    if not token_auth() or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        if not Path(named).expanduser().is_file():
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH names {named}, which does not exist; point it at the "
                              f"cluster's token file or unset it")
        return None
    path = default_token_path()
    if path.is_file():
        return None
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return None
    except OSError as exc:
        raise ResourceError(f"cannot write Ray's auth token to {path} ({exc.strerror}); set RAY_AUTH_TOKEN "
                            f"or RAY_AUTH_TOKEN_PATH") from None
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())
    return path


def job_cluster_address() -> str | None:
    """The cluster a ``ray job submit`` entrypoint runs on: Ray sets ``RAY_ADDRESS`` to its GCS
    address (host:port) for the job's driver. None outside a job, or when ``RAY_ADDRESS`` is a
    dashboard URL (that is what ``--address`` takes)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or "://" in address and not address.startswith("ray://"):
        return None
    return address


def _token_hint(address: str) -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return ""
    return ("; if the cluster was started with token auth (RAY_AUTH_MODE=token), set RAY_AUTH_MODE=token "
            "here too (the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)")


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse in one line a cluster that does not answer, that wants a token we do not send
    (``RAY_AUTH_MODE`` is not ``token``), or that refuses the token we send, before ``ray.init``
    spends its 30 s of retries and warnings on it."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    host_port = address.split("://")[-1]
    host, _, port = host_port.rpartition(":")
    import socket

    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError):
        raise ResourceError(f"no Ray cluster answers at {address}; start one (`ray start --head`) or fix "
                            f"--address") from None
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if not _gcs_refuses(host or "127.0.0.1", int(port), timeout, _auth_metadata() if token_mode else ()):
        return
    if not token_mode:
        raise ResourceError(f"the Ray cluster at {address} requires token auth; set RAY_AUTH_MODE=token "
                            f"(the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    raise ResourceError(f"the Ray cluster at {address} refused this machine's auth token; set RAY_AUTH_TOKEN "
                        f"(or ~/.ray/auth_token) to the token the cluster was started with")


def _auth_metadata() -> tuple:
    """The gRPC metadata Ray itself sends in token mode (empty when no token is found)."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    return tuple(loader.get_token_for_http_header().items()) if loader.has_token() else ()


def _gcs_refuses(host: str, port: int, timeout: float, metadata: tuple = ()) -> bool:
    """Ask the GCS for its cluster id, sending ``metadata`` (the auth token, if any): an
    UNAUTHENTICATED answer means the cluster wants a token and did not get the right one."""
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return False
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
    return False


@contextmanager
def ray_session(address: str | None = None, jemalloc: bool = False, num_cpus: int | None = None):
    """Use the Ray already running in this process, else connect/start one; shut down only
    what we started. ``address`` or ``RAY_ADDRESS`` (set by ``ray job submit``) joins a
    cluster (``auto`` = the one ``ray start`` left on this machine); otherwise a fresh local
    Ray uses this machine. We never fall back to Ray's own "latest cluster" lookup, since a
    killed driver can leave a stale address behind that would then be joined."""
    import ray

    tune_survives_memory_kills()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"runtime_env": {"env_vars": worker_env(jemalloc)}, "log_to_driver": True}
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        check_reachable(target)
        try:
            ray.init(address=target, **kwargs)
        except ConnectionError as exc:
            raise ResourceError(f"could not connect to the Ray cluster at {target}: "
                                f"{str(exc).splitlines()[0]}{_token_hint(target)}") from None
    else:
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def tune_survives_memory_kills() -> None:
    """Make a trial whose worker Ray's memory monitor killed a failed trial, not a crashed search.

    Ray 2.60 resolves the killed trial's pending call with ``OutOfMemoryError``, which is
    neither an actor nor a task error, and Tune's actor manager then raises "Caught unexpected
    exception", ending the whole experiment. Here such an error reaches Tune as an actor death
    (:class:`TrialOutOfMemoryError`), so Tune retries the trial like any lost worker and then
    records it as errored; :func:`orchestrator.search.describe_error` names it 'out of memory'.
    Idempotent; patches this driver process only.
    """
    from ray.air.execution._internal import actor_manager
    from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

    manager = actor_manager.RayActorManager
    if getattr(manager._actor_task_failed, "_medtune", False):
        return
    original = manager._actor_task_failed

    def _actor_task_failed(self, tracked_actor_task, exception):
        if isinstance(exception, OutOfMemoryError) and not isinstance(exception, (RayActorError, RayTaskError)):
            exception = __getattr__("TrialOutOfMemoryError")(str(exception))
        return original(self, tracked_actor_task, exception)

    _actor_task_failed._medtune = True
    manager._actor_task_failed = _actor_task_failed


def __getattr__(name: str):
    """``TrialOutOfMemoryError`` is built on first use, so importing this module imports no Ray
    (and unpickling a saved trial error finds the class here)."""
    if name != "TrialOutOfMemoryError":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ray.exceptions import OutOfMemoryError, RayActorError

    class TrialOutOfMemoryError(RayActorError, OutOfMemoryError):
        """A trial's worker killed by Ray's memory monitor, as an actor death Tune handles."""

        def __init__(self, message: str = ""):
            RayActorError.__init__(self, error_msg=message)
            self.message = message

        def __reduce__(self):
            return type(self), (self.error_msg,)

    TrialOutOfMemoryError.__module__, TrialOutOfMemoryError.__qualname__ = __name__, name
    globals()[name] = TrialOutOfMemoryError
    return TrialOutOfMemoryError


def node_capacities() -> list[dict]:
    """Resources of every alive node (CPU, GPU, memory in bytes)."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_trial_fits(cpus: float, gpus: float, memory: float = 0.0, autoscale: bool = False) -> None:
    """Refuse a per-trial request no node of the cluster can satisfy: such a trial would stay
    PENDING forever. With ``autoscale`` the cluster may still grow, so nothing is refused."""
    if autoscale:
        return
    nodes = node_capacities()
    if not any(n.get("CPU", 0) >= cpus for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        raise ResourceError(f"--cpus-per-trial {cpus:g} is more than any node of the cluster has (largest: "
                            f"{most:g} CPUs); lower it, or pass --autoscale on an autoscaling cluster")
    if gpus and not any(n.get("GPU", 0) >= min(gpus, 1.0) for n in nodes):
        total = sum(n.get("GPU", 0) for n in nodes)
        raise ResourceError(f"--gpus-per-trial {gpus:g} but the cluster has {total:g} GPUs; use "
                            f"--gpus-per-trial 0, or pass --autoscale on an autoscaling cluster")
    if memory and not any(n.get("memory", 0) >= memory for n in nodes):
        most = max((n.get("memory", 0) for n in nodes), default=0)
        raise ResourceError(f"a trial needs {memory / 2**30:.1f} GB of memory but the largest node offers "
                            f"{most / 2**30:.1f} GB to Ray; lower --memory-per-trial-gb or the batch size")


def local_node_memory() -> float:
    """The ``memory`` a new local Ray node offers its scheduler, known before it starts: Ray's
    own rule (available memory less the object store's default share)."""
    from ray._private import utils

    available = utils.estimate_available_memory()
    return float(available - utils.resolve_object_store_memory(available))


def local_node_cpus() -> float:
    """The CPUs a new local Ray node offers (Ray's own count: container limits included)."""
    from ray._private import utils

    return float(utils.get_num_cpus())


# Kept free of a node's memory share: a local node's memory is estimated before Ray starts it.
SHARE_MARGIN = 0.1


def memory_share(cpus_per_trial: float, nodes: list[dict]) -> float | None:
    """A trial's fair share of memory: on each node that can run it, the node's memory per CPU
    times the trial's CPUs; the smallest of these, less :data:`SHARE_MARGIN`, so a request of
    that size fits on every such node as often as its CPUs allow (a 0-CPU head is no such node),
    also when a node offers a little less than was estimated before it started. None without one."""
    shares = [n.get("memory", 0) * min(1.0, cpus_per_trial / n["CPU"]) for n in nodes
              if n.get("CPU", 0) >= cpus_per_trial and n.get("memory", 0) > 0]
    return min(shares) * (1 - SHARE_MARGIN) if shares else None


def largest_node_memory() -> float:
    """The most memory one node offers Ray's scheduler (bytes): the cap for any one trial."""
    return max((n.get("memory", 0) for n in node_capacities()), default=0.0)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, schedulers) takes the same path as Ctrl+C."""


_SIGTERM_RECEIVED = False


def sigterm_received() -> bool:
    """Whether SIGTERM stopped this process (Tune may re-raise our Terminated as a plain
    KeyboardInterrupt, so the exception's type alone does not tell)."""
    return _SIGTERM_RECEIVED


@contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` in the main thread while the block runs."""
    def handler(signum, frame):
        global _SIGTERM_RECEIVED
        _SIGTERM_RECEIVED = True
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
