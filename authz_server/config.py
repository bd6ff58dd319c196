"""Configuration: one YAML file, every key overridable by an AUTHZ_* variable and a flag.

Precedence, lowest first: built-in defaults, the YAML file, environment
variables, command-line flags. The result is validated once, as a whole, and
every problem names its key: ``risk.budget_ms: must be > 0, got -1``.

Key ``risk.budget_ms`` is set by ``AUTHZ_RISK_BUDGET_MS`` and ``--risk-budget-ms``;
top-level keys such as ``workers`` by ``AUTHZ_WORKERS`` and ``--workers``.
Mappings and lists of objects (trust domains, say) are YAML-only.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from authz_server.audit.config import LogConfig
from authz_server.identity.config import IdentityConfig
from authz_server.observability.config import MetricsConfig
from authz_server.policy.config import PolicyConfig
from authz_server.risk.config import RiskConfig
from authz_server.transport.config import AdmissionConfig

ENV_PREFIX = "AUTHZ_"
PROCESS_VARIABLES = frozenset({"AUTHZ_LOG_LEVEL", "AUTHZ_WORKER_INDEX"})
"""AUTHZ_* variables that steer the process, not the configuration."""


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
    transport: Literal["sync", "aio"] = "aio"
    """gRPC server implementation: grpc.aio, or grpcio's thread-pool server. Same throughput and CPU per check with
    every stage on; aio halves the server-side latency because no handler threads contend for the GIL around the
    ONNX model (benchmarks/RESULTS.md, "sync or aio")."""
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


def _coerce(key: str, tp: Any, value: Any, problems: list[str], from_text: bool) -> Any:
    """Turn a YAML value (or, from_text, an environment/flag string) into tp, or record a problem."""
    origin = typing.get_origin(tp)
    bad = object()

    def fail() -> Any:
        problems.append(f"{key}: expected {_describe(tp)}, got {value!r}")
        return bad

    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (from_text and value in ("", "null", "none")):
            return None if type(None) in args else fail()
        inner = [a for a in args if a is not type(None)]
        trial: list[str] = []
        for arg in inner:
            result = _coerce(key, arg, value, trial, from_text)
            if not trial:
                return result
            trial.clear()
        return fail()
    if origin is Literal:
        return value if value in typing.get_args(tp) else fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        return fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text:
            try:
                return int(value)
            except ValueError:
                pass
        return fail()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_text:
            try:
                return float(value)
            except ValueError:
                pass
        return fail()
    if tp is str:
        return value if isinstance(value, str) else fail()
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if from_text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            return fail()
        items = [_coerce(f"{key}[{i}]", item_tp, v, problems, from_text) for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            return fail()
        return {str(k): _coerce(f"{key}.{k}", value_tp, v, problems, from_text) for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            return fail()
        return _build(tp, value, key, problems)
    return fail()


def _build(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted(set(data) - names):
        where = f"{prefix}.{unknown}" if prefix else unknown
        problems.append(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(data):
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(key, hints[name], data[name], problems, from_text=False)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{prefix or 'config'}: {exc}")
        return cls()


def _scalar_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys that can be set from text (flags and environment)."""
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            yield from _scalar_keys(tp, key + ".")
        elif typing.get_origin(tp) is not dict and not (
            typing.get_origin(tp) in (list, tuple) and _is_dataclass_type(typing.get_args(tp)[0])
        ):
            yield key, tp


def env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def flag_name(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settable key: --risk-budget-ms, --workers, ..."""
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    group = parser.add_argument_group("configuration overrides (also AUTHZ_* environment variables)")
    for key, tp in _scalar_keys(Config):
        group.add_argument(
            flag_name(key), dest=f"cfg:{key}", metavar=key.rsplit(".", 1)[-1].upper(), help=f"{key} ({_describe(tp)})"
        )


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
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


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError([f"config: cannot read {path}: {exc.strerror}"]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"config: {path} is not valid YAML: {exc}"]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError([f"config: {path} must hold a mapping at the top level"])
        data = loaded

    texts: dict[str, str] = {}
    settable = dict(_scalar_keys(Config))
    for key in settable:
        if environ is not None and env_name(key) in environ:
            texts[key] = environ[env_name(key)]
    if environ is not None:
        known_env = {env_name(k) for k in settable}
        for name in environ:
            if name.startswith(ENV_PREFIX) and name not in known_env and name not in PROCESS_VARIABLES:
                problems.append(f"{name}: unknown configuration variable")
    texts.update(overrides or {})
    for key, text in texts.items():
        value = _coerce(key, settable[key], text, problems, from_text=True)
        _set_dotted(data, key, value)

    # Values from text are already typed; YAML values are coerced by _build.
    config: Config = _build(Config, data, "", problems)
    if not problems:
        _validate_all(config, "", problems)
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
