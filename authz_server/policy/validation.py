"""From YAML documents to validated declarations, or every reason why not.

Each document is first checked against the kind's published schema made
strict (schema.py), then semantically: SPIFFE IDs, path patterns, duplicate
names, expiry dates. Problems carry the file and line of the offending key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jsonschema
from spiffe import SpiffeId

from authz_server.policy import schema
from authz_server.policy.documents import JsonPath, SourceDocument, parse_documents
from authz_server.policy.fastcheck import Check, compile_check
from authz_server.policy.matching import CallerMatcher, HeaderCondition, PathPattern, PatternError, RouteMatcher
from authz_server.policy.model import Declaration, QuarantineEntry, QuarantineList, Rule
from authz_server.policy.outcome import Mode, RiskTimeoutAction
from authz_server.policy.paths import normalize_path
from authz_server.policy.problems import Problem, Severity

KNOWN_KINDS = (schema.ALLOWED_CALLS, schema.QUARANTINE, schema.ALLOWED_CALLS_TEST)


@cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    spec_schema = schema.strict_schema(schema.SPEC_SCHEMAS[kind]())
    validator_class = jsonschema.validators.validator_for(spec_schema, default=jsonschema.Draft202012Validator)
    return validator_class(spec_schema)


@cache
def _fast_check(kind: str) -> Check:
    return compile_check(schema.strict_schema(schema.SPEC_SCHEMAS[kind]()))


def parse_time(text: str) -> float | None:
    """An RFC 3339 timestamp as Unix seconds; None when it is not one or has no UTC offset."""
    try:
        moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if moment.tzinfo is None or "T" not in text.upper():
        return None
    return moment.timestamp()


def _document_digest(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _Checker:
    doc: SourceDocument
    problems: list[Problem] = field(default_factory=list)
    expiring: list[tuple[float, Problem]] = field(default_factory=list)
    """Warnings that apply once their time has passed (results are cached across reloads, `now` is not)."""

    def error(self, path: JsonPath, message: str) -> None:
        self.problems.append(Problem(self.doc.file, self.doc.line(path), message))

    def warn(self, path: JsonPath, message: str) -> None:
        self.problems.append(Problem(self.doc.file, self.doc.line(path), message, Severity.WARNING))

    # --- structure ------------------------------------------------------------

    def header(self) -> tuple[str, str] | None:
        """(kind, namespace/name) when the document's envelope is sound."""
        data = self.doc.data
        if not isinstance(data, Mapping):
            self.error((), "a declaration must be a mapping with apiVersion, kind, metadata and spec")
            return None
        ok = True
        for key in sorted(set(data) - {"apiVersion", "kind", "metadata", "spec", "status"}, key=str):
            self.error((key,), f"unknown key {key!r} (expected apiVersion, kind, metadata, spec)")
            ok = False
        if data.get("apiVersion") != schema.GROUP_VERSION:
            self.error(("apiVersion",), f"apiVersion must be {schema.GROUP_VERSION}, got {data.get('apiVersion')!r}")
            ok = False
        kind = data.get("kind")
        if kind not in KNOWN_KINDS:
            self.error(("kind",), f"kind must be one of {', '.join(KNOWN_KINDS)}, got {kind!r}")
            return None
        metadata = data.get("metadata")
        if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
            self.error(("metadata",), "metadata.name is required")
            return None
        name, namespace = metadata["name"], metadata.get("namespace", "default")
        for key, value in (("name", name), ("namespace", namespace)):
            if not isinstance(value, str) or not _is_dns_label(value):
                self.error(("metadata", key), f"metadata.{key} must be a DNS label (a-z, 0-9, -), got {value!r}")
                ok = False
        if "spec" not in data:
            self.error((), "spec is required")
            return None
        return (kind, f"{namespace}/{name}") if ok else None

    def against_schema(self, kind: str) -> bool:
        spec = self.doc.data["spec"]
        if _fast_check(kind)(spec):
            return True
        validator = _validator(kind)
        found = False
        for error in sorted(validator.iter_errors(spec), key=lambda e: [str(p) for p in e.absolute_path]):
            found = True
            path: JsonPath = ("spec", *error.absolute_path)
            if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
                schema_node: Any = error.schema
                known = sorted(schema_node.get("properties", {}))
                for key in sorted(set(error.instance) - set(known), key=str):
                    self.error((*path, key), f"unknown key {key!r} in {_where(path)} (known: {', '.join(known)})")
                continue
            self.error(path, f"{_where(path)}: {_plain(error)}")
        return not found

    # --- semantics ------------------------------------------------------------

    def spiffe_id(self, path: JsonPath, text: str) -> str | None:
        try:
            parsed = SpiffeId(text)
        except Exception as exc:
            self.error(path, f"{_where(path)}: {exc}")
            return None
        if str(parsed) != text:
            self.error(path, f"{_where(path)}: write the SPIFFE ID as {parsed} (trust domains are lower case)")
            return None
        return text

    def caller_prefix(self, path: JsonPath, text: str) -> str | None:
        base = text[:-2]  # without "/*"
        return None if self.spiffe_id(path, base) is None else base + "/"

    def time(self, path: JsonPath, text: str) -> float | None:
        """An RFC 3339 time with a UTC offset, or an error naming the key (the schema's format is not enforced)."""
        moment = parse_time(text)
        if moment is None:
            example = "2030-01-01T00:00:00Z"
            self.error(path, f"{_where(path)}: {text!r} is not an RFC 3339 time with a UTC offset, e.g. {example}")
        return moment

    def test_times(self) -> None:
        """AllowedCallsTest `spec.at` and each case's `at`: a time that does not parse never silently means now."""
        spec = self.doc.data["spec"]
        if "at" in spec:
            self.time(("spec", "at"), spec["at"])
        for index, case in enumerate(spec["cases"]):
            if "at" in case:
                self.time(("spec", "cases", index, "at"), case["at"])

    def expiry(self, path: JsonPath, text: str | None, what: str) -> float | None:
        if text is None:
            return None
        moment = self.time(path, text)
        if moment is None:
            return None
        message = f"{what} expired at {text}: it no longer matches anything; remove it"
        self.expiring.append((moment, Problem(self.doc.file, self.doc.line(path), message, Severity.WARNING)))
        return moment

    def caller(self, path: JsonPath, entry: Mapping[str, Any], callee_td: str | None) -> CallerMatcher | None:
        forms = [k for k in ("id", "prefix", "namespace") if k in entry]
        if len(forms) != 1:
            self.error(path, f"{_where(path)}: give exactly one of id, prefix or namespace")
            return None
        if forms[0] != "namespace" and ("serviceAccount" in entry or "trustDomain" in entry):
            self.error(path, f"{_where(path)}: serviceAccount and trustDomain go with namespace")
            return None
        if forms[0] == "id":
            spiffe_id = self.spiffe_id((*path, "id"), entry["id"])
            return CallerMatcher(spiffe_id) if spiffe_id else None
        if forms[0] == "prefix":
            prefix = self.caller_prefix((*path, "prefix"), entry["prefix"])
            return CallerMatcher(prefix, prefix=True) if prefix else None
        trust_domain = entry.get("trustDomain", callee_td)
        if trust_domain is None:
            self.error(path, f"{_where(path)}: trustDomain is required when the callee is given by workloadKey")
            return None
        service_account = entry.get("serviceAccount", "*")
        base = f"spiffe://{trust_domain}/ns/{entry['namespace']}/sa"
        if service_account == "*":
            prefix = self.caller_prefix((*path, "trustDomain"), base + "/*")
            return CallerMatcher(prefix, prefix=True) if prefix else None
        spiffe_id = self.spiffe_id((*path, "trustDomain"), f"{base}/{service_account}")
        return CallerMatcher(spiffe_id) if spiffe_id else None

    def route(self, path: JsonPath, entry: Mapping[str, Any]) -> RouteMatcher | None:
        ok = True
        methods_list = entry["methods"]
        methods = None if "*" in methods_list else frozenset(methods_list)
        if methods is None and len(methods_list) > 1:
            self.error((*path, "methods"), f"{_where((*path, 'methods'))}: * already means every method")
            ok = False
        exact: set[str] = set()
        patterns: list[PathPattern] = []
        for index, text in enumerate(entry["paths"]):
            where = (*path, "paths", index)
            try:
                pattern = PathPattern.parse(text)
            except PatternError as exc:
                self.error(where, str(exc))
                ok = False
                continue
            plain = text.replace("*", "x")
            if normalize_path(plain) != plain:
                normal = normalize_path(plain)
                hint = f"; write {normal}" if normal and "*" not in text else ""
                self.error(where, f"path {text!r} is not in normalised form, so no request could match it{hint}")
                ok = False
                continue
            if pattern.exact is not None:
                exact.add(pattern.exact)
            else:
                patterns.append(pattern)
        headers: list[HeaderCondition] = []
        for index, header in enumerate(entry.get("headers", [])):
            where = (*path, "headers", index)
            if ("values" in header) == ("present" in header):
                self.error(where, f"{_where(where)}: give exactly one of values or present")
                ok = False
                continue
            values = frozenset(header["values"]) if "values" in header else None
            headers.append(HeaderCondition(header["name"].lower(), values, header.get("present")))
        if not ok:
            return None
        return RouteMatcher(methods, frozenset(exact), tuple(patterns), tuple(headers))

    def allowed_calls(self, doc_id: str) -> Declaration | None:
        spec = self.doc.data["spec"]
        before = len(self._errors())
        workload, workload_key = spec.get("workload"), spec.get("workloadKey")
        callee_td: str | None = None
        if (workload is None) == (workload_key is None):
            self.error(("spec",), "spec: give exactly one of workload (a SPIFFE ID) or workloadKey")
        elif workload is not None and self.spiffe_id(("spec", "workload"), workload):
            callee_td = SpiffeId(workload).trust_domain.name
        elif workload_key is not None and not workload_key:
            self.error(("spec", "workloadKey"), "spec.workloadKey must not be empty")
        mode = Mode(spec.get("mode", "enforce"))
        risk_shadow = bool(spec.get("riskShadow", False))
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(spec["rules"]):
            path: JsonPath = ("spec", "rules", index)
            name = raw["name"]
            if name in seen:
                self.error((*path, "name"), f"rule name {name!r} is already used at line {seen[name]}")
            seen[name] = self.doc.line((*path, "name"))
            callers = [self.caller((*path, "from", i), e, callee_td) for i, e in enumerate(raw["from"])]
            routes = [self.route((*path, "to", i), e) for i, e in enumerate(raw["to"])]
            expires_at = self.expiry((*path, "expires"), raw.get("expires"), f"rule {name!r}")
            deny = raw.get("action", "allow") == "deny"
            if deny and ("maxRisk" in raw or "onRiskTimeout" in raw):
                self.error(path, f"rule {name!r}: maxRisk and onRiskTimeout only apply to allow rules")
            rules.append(
                Rule(
                    doc_id,
                    name,
                    deny,
                    mode,
                    tuple(c for c in callers if c is not None),
                    tuple(r for r in routes if r is not None),
                    float(raw["maxRisk"]) if "maxRisk" in raw else None,
                    RiskTimeoutAction(raw.get("onRiskTimeout", "allow")),
                    risk_shadow,
                    expires_at,
                    self.doc.file,
                    self.doc.line(path),
                )
            )
        if not rules:
            self.warn(("spec", "rules"), "no rules: every call to this workload is denied")
        if len(self._errors()) > before:
            return None
        return Declaration(
            doc_id,
            workload,
            workload_key,
            mode,
            risk_shadow,
            tuple(rules),
            self.doc.file,
            self.doc.line(()),
            _document_digest(self.doc.data),
        )

    def quarantine(self, doc_id: str) -> QuarantineList | None:
        before = len(self._errors())
        entries: list[QuarantineEntry] = []
        for index, raw in enumerate(self.doc.data["spec"]["entries"]):
            path: JsonPath = ("spec", "entries", index)
            if ("id" in raw) == ("prefix" in raw):
                self.error(path, f"{_where(path)}: give exactly one of id or prefix")
                continue
            if "id" in raw:
                spiffe_id = self.spiffe_id((*path, "id"), raw["id"])
                caller = CallerMatcher(spiffe_id) if spiffe_id else None
            else:
                prefix = self.caller_prefix((*path, "prefix"), raw["prefix"])
                caller = CallerMatcher(prefix, prefix=True) if prefix else None
            what = f"quarantine of {raw.get('id') or raw.get('prefix')}"
            expires_at = self.expiry((*path, "expires"), raw["expires"], what)
            if caller is not None and expires_at is not None:
                entries.append(
                    QuarantineEntry(doc_id, caller, raw["reason"], expires_at, self.doc.file, self.doc.line(path))
                )
        if len(self._errors()) > before:
            return None
        return QuarantineList(doc_id, tuple(entries), self.doc.file, self.doc.line(()), _document_digest(self.doc.data))

    def _errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]


def _is_dns_label(text: str) -> bool:
    return len(text) <= 63 and re.fullmatch(schema.K8S_NAME_PATTERN, text) is not None


def _where(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "document"


_PATTERN_HINTS = {
    schema.SPIFFE_ID_PATTERN: "expected a SPIFFE ID, spiffe://TRUST-DOMAIN/PATH",
    schema.CALLER_PREFIX_PATTERN: "a prefix is written spiffe://TRUST-DOMAIN/* or spiffe://TRUST-DOMAIN/PATH/*",
    schema.METHOD_PATTERN: "methods are written in upper case (GET, POST), or * for any",
    schema.PATH_PATTERN: "paths start with /",
    schema.HEADER_NAME_PATTERN: "not a valid HTTP header name",
    schema.K8S_NAME_PATTERN: "expected a DNS label: lower-case letters, digits and -",
    schema.SERVICE_ACCOUNT_PATTERN: "expected a Kubernetes service account name, or * for any",
    r"^[A-Z]+$": "methods are written in upper case (GET, POST)",
}


def _plain(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, made plain for the common cases."""
    value: Any = error.instance
    expected: Any = error.validator_value
    match error.validator:
        case "required":
            missing = [k for k in expected if k not in value]
            return f"missing required key {', '.join(repr(k) for k in missing)}"
        case "enum":
            return f"must be one of {', '.join(map(str, expected))}, got {value!r}"
        case "type":
            return f"expected {'a list' if expected == 'array' else expected}, got {value!r}"
        case "pattern":
            return f"{value!r}: {_PATTERN_HINTS.get(expected, f'must match {expected}')}"
        case "minItems":
            return "must not be empty"
        case "minimum" | "maximum":
            return f"{value!r} is out of range ({error.validator} {expected})"
    return str(error.message)


@dataclass(frozen=True)
class FileResult:
    """Everything one file declares, validated; reused across reloads while the file's bytes stay the same."""

    declarations: tuple[Declaration, ...] = ()
    quarantines: tuple[QuarantineList, ...] = ()
    tests: tuple[SourceDocument, ...] = ()
    problems: tuple[Problem, ...] = ()
    expiring: tuple[tuple[float, Problem], ...] = ()


_BUILDERS: dict[str, Callable[[_Checker, str], Declaration | QuarantineList | None]] = {
    schema.ALLOWED_CALLS: _Checker.allowed_calls,
    schema.QUARANTINE: _Checker.quarantine,
}


def _semantics_despite_schema_errors(checker: _Checker, kind: str, doc_id: str) -> None:
    """Report the semantic problems of a document the schema refused too, so one run shows them all.

    The document is refused whatever this finds. Its structure is known to be off somewhere, so the checks run
    best-effort (one that trips over the structure stops, its findings so far kept), and a line the schema
    already faulted keeps only the schema's message.
    """
    faulted = {problem.line for problem in checker.problems}
    extra = _Checker(checker.doc)
    try:
        if kind == schema.ALLOWED_CALLS_TEST:
            extra.test_times()
        else:
            _BUILDERS[kind](extra, doc_id)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        pass
    checker.problems.extend(p for p in extra.problems if p.line not in faulted and p.severity is Severity.ERROR)


def validate_file(name: str, content: bytes) -> FileResult:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return FileResult(problems=(Problem(name, 0, "not UTF-8 text"),))
    documents, problems = parse_documents(name, text)
    declarations: list[Declaration] = []
    quarantines: list[QuarantineList] = []
    tests: list[SourceDocument] = []
    expiring: list[tuple[float, Problem]] = []
    for doc in documents:
        checker = _Checker(doc)
        header = checker.header()
        if header is not None:
            kind, doc_id = header
            if checker.against_schema(kind):
                if kind == schema.ALLOWED_CALLS_TEST:
                    checker.test_times()
                    tests.append(doc)
                else:
                    built = _BUILDERS[kind](checker, doc_id)
                    if isinstance(built, Declaration):
                        declarations.append(built)
                    elif isinstance(built, QuarantineList):
                        quarantines.append(built)
            else:
                _semantics_despite_schema_errors(checker, kind, doc_id)
        problems.extend(checker.problems)
        expiring.extend(checker.expiring)
    return FileResult(tuple(declarations), tuple(quarantines), tuple(tests), tuple(problems), tuple(expiring))
