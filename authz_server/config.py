"""Configuration: one YAML file, every key overridable by an AUTHZ_* variable and a flag.

Precedence, lowest first: built-in defaults, the YAML file, environment
variables, command-line flags. The result is validated once, as a whole, and
every problem names its key: ``risk.budget_ms: must be > 0, got -1``.

Key ``risk.budget_ms`` is set by ``AUTHZ_RISK_BUDGET_MS`` and ``--risk-budget-ms``;
top-level keys such as ``workers`` by ``AUTHZ_WORKERS`` and ``--workers``.
Lists are written comma-separated or as a YAML flow list (``AUTHZ_POLICY_PATHS=a,b``,
``--policy-paths a --policy-paths b``), mappings as a YAML flow mapping
(``AUTHZ_IDENTITY_TRUST_DOMAINS='{example.org: {bundle: /b.pem}}'``). Each
problem also says where the value came from: ``(in config.yaml)``,
``(from AUTHZ_WORKERS)``, ``(from --workers)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from authz_server.audit.config import LogConfig
from authz_server.identity.config import IdentityConfig
from authz_server.observability.config import MetricsConfig
from authz_server.policy.config import PolicyConfig
from authz_server.risk.config import RiskConfig
from authz_server.transport.config import AdmissionConfig, CallersConfig

ENV_PREFIX = "AUTHZ_"
PROCESS_VARIABLES = frozenset({"AUTHZ_LOG_LEVEL", "AUTHZ_WORKER_INDEX"})
"""AUTHZ_* variables that steer the process, not the configuration."""
DEFAULT_ORIGIN = "built-in default"


UNIX_PREFIX = "unix:"
"""`listen` values starting with this name a Unix domain socket (gRPC's own address syntax)."""


class ConfigError(ValueError):
    """Raised with every problem found, one per line, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:9191"
    """Address of the gRPC server (Check, health, reflection). Use 0.0.0.0:9191 in a pod, or `unix:/PATH` for a
    Unix domain socket that the pod's own Envoy reaches on a shared volume (one process: workers 0 or 1)."""
    transport: Literal["aio", "h2", "sync"] = "aio"
    """gRPC server implementation. All three serve Check, grpc.health.v1 (Check, Watch) and server reflection
    (grpc.reflection.v1alpha, what `grpcurl list` asks). aio: grpc.aio; it holds its share of capacity under 2x
    overload because calls past its bounds are refused in gRPC's C core. h2: gRPC on asyncio (uvloop) with the
    pure-Python h2 library, one thread: about 40% less CPU per check than grpc.aio on the always-allow floor and
    25% less with every stage on, through Envoy (benchmarks/RESULTS.md, "The h2 transport"), but every refusal
    costs Python, so offered more than it can decide it decided only 36-90% of its capacity in time
    (benchmarks/RESULTS.md, "Overload"; its health probes are answered whatever the load): choose it where load
    stays below capacity, as in the sidecar layout. sync: grpcio's thread-pool server, twice aio's server-side
    latency (handler threads contend for the GIL around the ONNX model, benchmarks/RESULTS.md, "sync or aio")."""
    workers: int = 0
    """Server processes sharing the port through SO_REUSEPORT; 0 means one per CPU."""
    threads: int = 4
    """Handler threads per process for the sync transport."""
    grace_period_s: float = 10.0
    """On SIGTERM, how long in-flight checks may take to finish before the server stops."""
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    callers: CallersConfig = field(default_factory=CallersConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)

    def validate(self) -> list[str]:
        problems = []
        if self.listen.startswith(UNIX_PREFIX):
            if not self.listen.startswith(UNIX_PREFIX + "/"):
                problems.append(f"listen: expected unix:/ABSOLUTE/PATH, got {self.listen!r}")
            if self.workers > 1:
                problems.append(f"workers: a Unix socket is served by one process, got {self.workers}")
        else:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(f"listen: expected HOST:PORT or unix:/PATH, got {self.listen!r}")
        if self.workers < 0:
            problems.append(f"workers: must be >= 0 (0 = one per CPU), got {self.workers}")
        if self.threads < 1:
            problems.append(f"threads: must be >= 1, got {self.threads}")
        if self.grace_period_s < 0:
            problems.append(f"grace_period_s: must be >= 0, got {self.grace_period_s}")
        return problems


# --- generic machinery -------------------------------------------------------
#
# Hand-written rather than pydantic-settings (measured in README, "Configuration reference"): importing
# pydantic_settings adds ~100 ms (+18%) to every `authz-server` command and worker start, and it merges its
# sources before validating, so an error could not say whether the value came from the file, a variable or a flag.


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def is_structured(tp: Any) -> bool:
    """Lists and mappings: from a variable or flag they are written as YAML (or, for lists, comma-separated)."""
    return typing.get_origin(tp) in (list, tuple, dict)


@dataclass(frozen=True)
class _Text:
    """A value written as text outside the file: an AUTHZ_* variable or a flag (repeated flags give several)."""

    value: str | list[str]
    origin: str


def _from_text(tp: Any, text: str | list[str]) -> Any:
    """Text from a variable or flag turned into the YAML value it stands for; the same checks then apply."""
    origin = typing.get_origin(tp)
    texts = text if isinstance(text, list) else [text]
    if origin in (list, tuple):
        items: list[Any] = []
        for part in texts:
            stripped = part.strip()
            if stripped.startswith("["):
                loaded = _yaml_text(stripped)
                items.extend(loaded if isinstance(loaded, list) else [loaded])
            else:
                items.extend(v.strip() for v in stripped.split(",") if v.strip())
        return items
    last = texts[-1].strip()
    if origin is dict or _is_dataclass_type(tp):
        return _yaml_text(last) if last else {}
    if tp is bool:
        lowered = last.lower()
        if lowered in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return lowered in ("1", "true", "yes", "on")
        return last
    if tp is int:
        try:
            return int(last)
        except ValueError:
            return last
    if tp is float:
        try:
            return float(last)
        except ValueError:
            return last
    return last


def _yaml_text(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_INVALID = object()


def _coerce(key: str, tp: Any, value: Any, problems: list[str], origin: str) -> Any:
    """Check a YAML value against tp; returns the typed value, or _INVALID after recording a problem."""
    type_origin = typing.get_origin(tp)

    def fail() -> Any:
        problems.append(f"{key}: expected {_describe(tp)}, got {value!r} ({origin})")
        return _INVALID

    if type_origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return None if type(None) in args else fail()
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            result = _coerce(key, arg, value, trial, origin)
            if not trial:
                return result
        return fail()
    if type_origin is Literal:
        return value if value in typing.get_args(tp) else fail()
    if tp is bool:
        return value if isinstance(value, bool) else fail()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if tp is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else fail()
    if tp is str:
        return value if isinstance(value, str) else fail()
    if type_origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, list):
            return fail()
        items = [_coerce(f"{key}[{i}]", item_tp, v, problems, origin) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else tuple(items)
    if type_origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            return fail()
        mapping = {str(k): _coerce(f"{key}.{k}", value_tp, v, problems, origin) for k, v in value.items()}
        return _INVALID if _INVALID in mapping.values() else mapping
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            return fail()
        return _build(tp, value, key, problems, origin)
    return fail()


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str], origin: str) -> Any:
    """An instance of cls from layered data; a key that fails its check keeps its default (and is reported)."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for unknown in sorted(set(data) - set(names)):
        where = f"{prefix}.{unknown}" if prefix else unknown
        problems.append(f"{where}: unknown key (known: {', '.join(sorted(names))}) ({origin})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value, value_origin = data[name], origin
        if isinstance(value, _Text):
            value, value_origin = _from_text(hints[name], value.value), value.origin
        typed = _coerce(key, hints[name], value, problems, value_origin)
        if typed is not _INVALID:
            kwargs[name] = typed
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{prefix or 'config'}: {exc} ({origin})")
        return cls()


def settable_keys(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every dotted key and its type: each is set in the file, by an AUTHZ_* variable and by a flag."""
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            yield from settable_keys(tp, key + ".")
        else:
            yield key, tp


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per key: --risk-budget-ms, --workers, ...; list keys may be repeated or comma-separated."""
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    group = parser.add_argument_group("configuration overrides (also AUTHZ_* environment variables)")
    for key, tp in settable_keys(Config):
        metavar = key.rsplit(".", 1)[-1].upper()
        if typing.get_origin(tp) in (list, tuple):
            group.add_argument(
                flag_name(key), dest=f"cfg:{key}", metavar=metavar, action="append", help=f"{key} (repeat, or A,B)"
            )
        else:
            group.add_argument(flag_name(key), dest=f"cfg:{key}", metavar=metavar, help=f"{key} ({_describe(tp)})")


def flag_overrides(args: argparse.Namespace) -> dict[str, str | list[str]]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        node = data.get(part)
        if not isinstance(node, dict):
            node = data[part] = {}
        data = node
    data[leaf] = value


def _validate_all(obj: Any, prefix: str, problems: list[str]) -> None:
    validate = getattr(obj, "validate", None)
    if callable(validate):
        for problem in validate():
            problems.append(f"{prefix}.{problem}" if prefix else problem)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _validate_all(value, f"{prefix}.{f.name}" if prefix else f.name, problems)


def _holds(data: Mapping[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _owner(problem: str, keys: Iterable[str]) -> str | None:
    """The key a problem line is about: the longest key its leading `key:` starts with."""
    named = problem.split(": ", 1)[0]
    found = [k for k in keys if named == k or named.startswith(k + ".") or named.startswith(k + "[")]
    return max(found, key=len, default=None)


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | list[str]] | None = None,
) -> Config:
    """The effective configuration: defaults, then the file, then AUTHZ_* variables, then flags.

    Every problem is reported at once, each naming its key and where the value came from.
    """
    problems: list[str] = []
    data: dict[str, Any] = {}
    file_origin = "no file"
    if path is not None:
        file_origin = f"in {path}"
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            problems.append(f"config: cannot read {path}: {exc.strerror}")
        except yaml.YAMLError as exc:
            problems.append(f"config: {path} is not valid YAML: {exc}")
        else:
            if isinstance(loaded, dict):
                data = loaded
            else:
                problems.append(f"config: {path} must hold a mapping at the top level")

    keys = dict(settable_keys(Config))
    origins = {key: file_origin if _holds(data, key) else DEFAULT_ORIGIN for key in keys}
    if environ is not None:
        known_env = {env_name(k): k for k in keys}
        for name in sorted(environ):
            if name in known_env:
                key = known_env[name]
                origins[key] = f"from {name}"
                _set_dotted(data, key, _Text(environ[name], origins[key]))
            elif name.startswith(ENV_PREFIX) and name not in PROCESS_VARIABLES:
                problems.append(f"{name}: unknown configuration variable")
    for key, text in (overrides or {}).items():
        origins[key] = f"from {flag_name(key)}"
        _set_dotted(data, key, _Text(text, origins[key]))

    typing_problems: list[str] = []
    config: Config = _build(Config, data, "", typing_problems, file_origin)
    # A key whose value failed its type check keeps its default; checks of that default would only be noise.
    failed = {_owner(p, keys) for p in typing_problems}
    semantic: list[str] = []
    _validate_all(config, "", semantic)
    for problem in semantic:
        owner = _owner(problem, keys)
        if owner in failed and owner is not None:
            continue
        # A cross-key check (say xfcc_trusted_proxies required by sources) may name a key left at its default.
        known = owner is not None and origins[owner] != DEFAULT_ORIGIN
        typing_problems.append(f"{problem} ({origins[owner]})" if known and owner is not None else problem)
    problems.extend(typing_problems)
    if problems:
        raise ConfigError(problems)
    return config


def to_plain(obj: Any) -> Any:
    """The configuration as plain YAML-able data (for `authz-server config show`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_plain(config), sort_keys=False)
