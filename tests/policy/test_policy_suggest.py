"""`policy suggest`: from decision log lines (built by the server's own record builder) to grants and tests."""

from __future__ import annotations

import copy
import gzip
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_server.audit.record import HeaderFilter, build_record
from authz_server.authorizer import StageTimings
from authz_server.decision import decide
from authz_server.identity.result import IdentityFailure, IdentityReason
from authz_server.ops.logfile import MAX_LINE_CHARS, ReadStats, read_decisions, with_rotated
from authz_server.policy import PolicySet, load_policies
from authz_server.policy.casefile import run_tests
from authz_server.policy.documents import FileSnapshot
from authz_server.policy.loader import compile_snapshot
from authz_server.policy.observed import Excluded, Observer, exclusion, grant_pattern
from authz_server.policy.suggest import report_text, suggest, unused_rules, would_deny
from authz_server.risk.outcome import RiskAction, RiskOutcome, RiskStatus
from tests.policy.policy_support import TD, allowed_calls, check, cli, write

PAYMENTS = f"spiffe://{TD}/ns/shop/sa/payments"
CHECKOUT = f"spiffe://{TD}/ns/shop/sa/checkout"
INVOICER = f"spiffe://{TD}/ns/billing/sa/invoicer"
RECONCILER = f"spiffe://{TD}/ns/billing/sa/reconciler"
AUDITOR = f"spiffe://{TD}/ns/billing/sa/auditor"
PROBER = f"spiffe://{TD}/ns/web/sa/prober"
T0 = 1_790_000_000.0
DAY = 86400.0

CATCH_ALL_DRY_RUN = allowed_calls(
    "payments-adoption",
    f"""
    workload: {PAYMENTS}
    mode: dry-run
    rules:
      - name: no-admin
        action: deny
        from: [{{prefix: "spiffe://{TD}/*"}}]
        to: [{{methods: ["*"], paths: ["/v1/admin/**"]}}]
      - name: reads-while-adopting
        from: [{{prefix: "spiffe://{TD}/*"}}]
        to: [{{methods: [GET], paths: ["/**"]}}]
    """,
    namespace="shop",
)


def _policies(tmp_path: Path, *documents: str, name: str = "current") -> tuple[Path, PolicySet]:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    write(directory, "declarations.yaml", *documents)
    return directory, load_policies([str(directory)])


class LogWriter:
    """Decision log lines as the server writes them: the real policy set, `decide` and `build_record`."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.lines: list[str] = []
        self._n = 0

    def call(
        self,
        caller: str,
        method: str,
        path: str,
        ts: float = T0,
        *,
        callee: str = PAYMENTS,
        workload_key: str | None = None,
        risk: RiskOutcome | None = None,
        identity_failure: IdentityReason | None = None,
        times: int = 1,
    ) -> None:
        for _ in range(times):
            self._n += 1
            extensions = {"workload": workload_key} if workload_key else None
            call, identity = check(caller, method, path, callee=callee, context_extensions=extensions)
            outcome = self.policies.evaluate(call, identity, ts)
            decision = (
                decide(f"d-{self._n}", IdentityFailure(identity_failure, "test"), None, None)
                if identity_failure is not None
                else decide(f"d-{self._n}", identity, outcome, risk if outcome.allowed else None)
            )
            record = build_record(call, decision, StageTimings(1, 1, 1, 1, 1), ts, HeaderFilter((), ()))
            self.lines.append(json.dumps(record))

    def write(self, path: Path) -> Path:
        path.write_text("".join(line + "\n" for line in self.lines))
        return path


def _observe(log: Sequence[str] | Path, current: PolicySet | None = None, **kwargs: Any) -> Any:
    paths = [str(log)] if isinstance(log, Path) else list(log)
    stats = ReadStats()
    observations = Observer(current, now=T0 + 40 * DAY, **kwargs).observe_all(read_decisions(paths, stats))
    return observations, stats


def _suggest_files(tmp_path: Path, log: Path, current: PolicySet | None = None, **kwargs: Any) -> Path:
    observations, _ = _observe(log, current)
    out = tmp_path / "suggested"
    out.mkdir(exist_ok=True)
    taken = [d.id for d in current.declarations] if current is not None else []
    for name, text in suggest(observations, taken=taken, now=T0, **kwargs).files.items():
        (out / name).write_text(text)
    return out


def _granted(out: Path) -> dict[str, dict[str, Any]]:
    """rule name -> the rule, over every suggested document."""
    rules = {}
    for file in out.glob("*.yaml"):
        for doc in yaml.safe_load_all(file.read_text()):
            for rule in doc["spec"]["rules"] if doc["kind"] == "AllowedCalls" else []:
                rules[rule["name"]] = rule
    return rules


# --- folding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("/v1/charges", "/v1/charges"),
        ("/v1/charges/ch_1002", "/v1/charges/*"),
        ("/v1/orders/1234/items", "/v1/orders/*/items"),
        ("/v1/users/3f2a9c01-1b2c-4d5e-8f90-a1b2c3d4e5f6", "/v1/users/*"),
        ("/v2/prices/eur", "/v2/prices/eur"),  # words and versions stay
        ("/v1/charges/", "/v1/charges/"),
        ("/v1/a/*", None),  # a literal * would become a wildcard
        ("/v1/a/{id}", None),  # a literal {id} is not an id the templating found
        ("/v1/a?b=1", None),  # the log never holds a query in the path
        ("/v1/./x", None),  # not normalised: no request could have been logged so
        ("/" + "/".join(["s"] * 80), None),  # deeper than the templating keeps: ** would grant everything below
    ],
)
def test_paths_fold_into_grant_patterns_as_the_risk_stage_folds_them(path: str, pattern: str | None) -> None:
    assert grant_pattern(path) == pattern


def test_ids_fold_into_one_rule_methods_stay_per_path(tmp_path: Path) -> None:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    for i in range(5):
        log.call(CHECKOUT, "GET", f"/v1/charges/ch_{1000 + i}", T0 + i)
    log.call(CHECKOUT, "POST", "/v1/charges", T0 + 10, times=3)
    log.call(CHECKOUT, "GET", "/v1/charges", T0 + 11)
    log.call(CHECKOUT, "DELETE", "/v1/charges/ch_1001", T0 + 12)
    out = _suggest_files(tmp_path, log.write(tmp_path / "decisions.jsonl"))
    rule = _granted(out)["from-shop-checkout"]
    assert rule["from"] == [{"id": CHECKOUT}]
    # GET+POST on /v1/charges, GET+DELETE on /v1/charges/*: never POST on /v1/charges/* nor DELETE on /v1/charges.
    assert sorted((tuple(e["methods"]), tuple(e["paths"])) for e in rule["to"]) == [
        (("DELETE", "GET"), ("/v1/charges/*",)),
        (("GET", "POST"), ("/v1/charges",)),
    ]
    text = (out / "shop.payments.yaml").read_text()
    assert "# 10 calls, first 2026-" in text
    assert '"/v1/charges/*"  # DELETE 1, GET 5; ' in text
    suggested = load_policies([str(out)])
    assert not suggested.warnings
    assert run_tests([str(out)], now=T0).ok


# --- exclusions ------------------------------------------------------------------------------------------------


def test_only_legitimate_calls_become_grants(tmp_path: Path) -> None:
    directory, current = _policies(
        tmp_path,
        CATCH_ALL_DRY_RUN,
        allowed_calls(
            "grant-oncall",
            f"""
            workload: {PAYMENTS}
            mode: dry-run  # beside the dry-run catch-all (an enforced document would end its allow rules)
            rules:
              - name: grant
                from: [{{id: {AUDITOR}}}]
                to: [{{methods: [GET], paths: [/v1/ledger]}}]
                expires: "2099-01-01T00:00:00Z"
            """,
            namespace="shop",
        ),
    )
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/v1/charges")  # allowed (by the dry-run catch-all)
    log.call(CHECKOUT, "POST", "/v1/charges")  # dry-run-deny, no-matching-rule: counts
    log.call(CHECKOUT, "GET", "/v1/admin/export")  # dry-run-deny by a deny rule: never
    log.call(PROBER, "GET", "/v1/secrets", identity_failure=IdentityReason.EXPIRED)  # no verified caller
    denied_by_risk = RiskOutcome(RiskStatus.SCORED, 0.99, action=RiskAction.DENY)
    log.call(INVOICER, "GET", "/v1/invoices/inv_0001", risk=denied_by_risk)  # allowed by policy, refused by risk
    objected_in_shadow = RiskOutcome(RiskStatus.SCORED, 0.99, action=RiskAction.DENY, shadow=True)
    log.call(RECONCILER, "GET", "/v1/invoices/inv_0002", risk=objected_in_shadow)  # went through: counts, flagged
    log.call(AUDITOR, "GET", "/v1/ledger")  # allowed by a time-boxed grant: never a standing rule
    # An enforced callee's default denial never went through: probing, not evidence.
    other = f"spiffe://{TD}/ns/shop/sa/inventory"
    enforced = load_policies(
        [str(write(directory, "inventory.yaml", allowed_calls("inventory", f"workload: {other}\nrules: []")))]
    )
    log.call(CHECKOUT, "GET", "/v1/stock")  # payments: allowed in dry-run
    log.policies = enforced
    log.call(CHECKOUT, "GET", "/v1/stock", callee=other)
    records = [json.loads(line) for line in log.lines]
    assert [(r["verdict"], r["reason"], exclusion(r)) for r in records] == [
        ("allow", "allowed", None),
        ("dry-run-deny", "no-matching-rule", None),
        ("dry-run-deny", "denied-by-rule", Excluded.DENY_RULE),
        ("deny", "expired", Excluded.IDENTITY),
        ("deny", "risk", Excluded.RISK),
        ("allow", "allowed", None),
        ("allow", "allowed", None),
        ("allow", "allowed", None),
        ("deny", "no-matching-rule", Excluded.DENIED),
    ]
    observations, _ = _observe(log.write(tmp_path / "decisions.jsonl"), current)
    assert dict(observations.excluded) == {
        Excluded.DENY_RULE: 1,
        Excluded.IDENTITY: 1,
        Excluded.RISK: 1,
        Excluded.GRANT: 1,
        Excluded.DENIED: 1,
    }
    suggestion = suggest(observations, taken=[d.id for d in current.declarations], now=T0)
    rules = {r.name: r for d in suggestion.documents for r in d.rules}
    assert sorted(rules) == ["from-billing-reconciler", "from-shop-checkout"]
    checkout = {(line.pattern, m) for line, m, _ in rules["from-shop-checkout"].uses}
    assert checkout == {("/v1/charges", "GET"), ("/v1/charges", "POST"), ("/v1/stock", "GET")}
    (text,) = suggestion.files.values()
    assert "risk objected (in shadow) to 1" in text
    assert "/v1/admin" not in text and "/v1/ledger" not in text and "/v1/secrets" not in text


def test_a_callee_without_a_spiffe_id_is_granted_by_workload_key(tmp_path: Path) -> None:
    _, current = _policies(
        tmp_path,
        allowed_calls(
            "legacy",
            f"""
            workloadKey: legacy-inventory
            mode: dry-run
            rules:
              - name: reads
                from: [{{prefix: "spiffe://{TD}/*"}}]
                to: [{{methods: [GET], paths: ["/**"]}}]
            """,
        ),
    )
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/stock/sku-00042", callee="", workload_key="legacy-inventory")
    log.call(CHECKOUT, "POST", "/reservations", callee="", workload_key="legacy-inventory")
    out = _suggest_files(tmp_path, log.write(tmp_path / "decisions.jsonl"), current)
    document, tests = yaml.safe_load_all((out / "default.legacy-inventory.yaml").read_text())
    assert tests["kind"] == "AllowedCallsTest" and tests["spec"]["cases"][0]["workloadKey"] == "legacy-inventory"
    assert document["metadata"] == {"name": "legacy-inventory", "namespace": "default"}
    assert document["spec"]["workloadKey"] == "legacy-inventory"
    assert [e["paths"] for e in document["spec"]["rules"][0]["to"]] == [["/stock/*"], ["/reservations"]]
    assert run_tests([str(out)], now=T0).ok


# --- grouping --------------------------------------------------------------------------------------------------


def _billing_traffic(tmp_path: Path, *, auditor_differs: bool) -> Path:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    for caller in (INVOICER, RECONCILER, AUDITOR):
        log.call(caller, "GET", f"/v1/invoices/inv_{abs(hash(caller)) % 10000:04d}")
        log.call(caller, "POST", "/v1/invoices")
    if auditor_differs:
        log.call(AUDITOR, "GET", "/v1/ledger")
    log.call(CHECKOUT, "POST", "/v1/charges")
    return log.write(tmp_path / "decisions.jsonl")


def test_group_namespace_when_every_service_account_calls_the_same_routes(tmp_path: Path) -> None:
    out = _suggest_files(tmp_path, _billing_traffic(tmp_path, auditor_differs=False), group_namespace=True)
    rules = _granted(out)
    assert sorted(rules) == ["from-ns-billing", "from-shop-checkout"]
    assert rules["from-ns-billing"]["from"] == [{"namespace": "billing"}]
    assert "(auditor, invoicer, reconciler) called exactly these routes" in (out / "shop.payments.yaml").read_text()
    assert run_tests([str(out)], now=T0).ok


def test_no_grouping_unless_asked_or_when_one_account_differs(tmp_path: Path) -> None:
    same = _billing_traffic(tmp_path, auditor_differs=False)
    assert "from-ns-billing" not in _granted(_suggest_files(tmp_path, same))
    differs = _billing_traffic(tmp_path, auditor_differs=True)
    rules = _granted(_suggest_files(tmp_path, differs, group_namespace=True))
    assert sorted(rules) == [
        "from-billing-auditor",
        "from-billing-invoicer",
        "from-billing-reconciler",
        "from-shop-checkout",
    ]


# --- garbled, truncated, rotated, bounded ----------------------------------------------------------------------


def test_garbled_and_truncated_lines_are_skipped_and_counted_rotated_files_read(tmp_path: Path) -> None:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/v1/charges/ch_1001", T0)
    log.call(CHECKOUT, "POST", "/v1/charges", T0 + 1)
    log.call(INVOICER, "GET", "/v1/invoices", T0 + 2)
    old, new, newest = log.lines
    base = tmp_path / "decisions.jsonl"
    with gzip.open(tmp_path / "decisions.jsonl.2.gz", "wt") as rotated:
        rotated.write(old + "\n")
    (tmp_path / "decisions.jsonl.1").write_text(
        new + "\n"
        + newest[: len(newest) // 2] + "\n"  # a pod killed mid-write
        + "\x00\x00\x00 binary junk\n"
        + json.dumps({"schema": 1, "decision_id": "x", "verdict": "allow", "ts": "yesterday", "request": 5}) + "\n"
        + json.dumps({**json.loads(new), "ts": float("nan")}) + "\n"  # Python's json reads (and writes) NaN
        + "x" * (MAX_LINE_CHARS + 10) + "\n"  # a line longer than any decision: skipped without being held
    )  # fmt: skip
    base.write_text(newest[:-7])  # the current file ends mid-line
    assert with_rotated([str(base)]) == [
        str(tmp_path / "decisions.jsonl.2.gz"),
        str(tmp_path / "decisions.jsonl.1"),
        str(base),
    ]
    observations, stats = _observe(with_rotated([str(base)]))
    assert stats.decisions == 4 and stats.skipped == 4
    assert observations.legitimate == 2 and observations.excluded == {Excluded.MALFORMED: 2}
    assert {(c, p, m) for (_, c), e in observations.edges.items() for (p, m) in e.routes} == {
        (CHECKOUT, "/v1/charges/*", "GET"),
        (CHECKOUT, "/v1/charges", "POST"),
    }


def test_memory_is_bounded_by_distinct_routes_not_lines(tmp_path: Path) -> None:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/v1/charges", times=300)  # one route, many lines
    for i in range(50):  # a caller walking names the templating cannot fold
        log.call(PROBER, "GET", f"/v1/{'abcdefghij'[i % 10]}{'klmnopqrst'[i // 10]}")
    observations, _ = _observe(log.write(tmp_path / "decisions.jsonl"), max_routes_per_edge=20)
    edges = {caller: edge for (_, caller), edge in observations.edges.items()}
    assert len(edges[CHECKOUT].routes) == 1 and edges[CHECKOUT].routes[("/v1/charges", "GET")].calls == 300
    assert len(edges[PROBER].routes) == 20 and edges[PROBER].refused == 30
    suggestion = suggest(observations, now=T0)
    assert "INCOMPLETE: 30 calls to further routes were not kept" in suggestion.files["shop.payments.yaml"]
    tight, _ = _observe(tmp_path / "decisions.jsonl", max_bytes=4000)
    assert tight.bytes_used <= 4000 and tight.excluded[Excluded.BUDGET] > 0


# --- against the current declarations --------------------------------------------------------------------------


def test_comparison_with_current_declarations(tmp_path: Path) -> None:
    current_doc = allowed_calls(
        "payments",
        f"""
        workload: {PAYMENTS}
        rules:
          - name: checkout-charges
            from: [{{id: {CHECKOUT}}}]
            to: [{{methods: [POST], paths: [/v1/charges]}}]
          - name: old-batch-job
            from: [{{id: {AUDITOR}}}]
            to: [{{methods: [GET], paths: [/v1/ledger]}}]
          - name: retired-partner
            from: [{{namespace: partners}}]
            to: [{{methods: [GET], paths: ["/v1/prices/*"]}}]
        """,
        namespace="shop",
    )
    _, current = _policies(tmp_path, current_doc, CATCH_ALL_DRY_RUN)
    _, adopting = _policies(tmp_path, CATCH_ALL_DRY_RUN, name="adopting")
    log = LogWriter(adopting)  # the calls were logged under the dry-run catch-all alone
    log.call(AUDITOR, "GET", "/v1/ledger", T0)  # 40 days before "now": old enough to count as unused
    log.call(CHECKOUT, "POST", "/v1/charges", T0 + 35 * DAY, times=4)  # granted today
    log.call(CHECKOUT, "GET", "/v1/charges/ch_1001", T0 + 36 * DAY, times=2)  # would be denied today
    observations, _ = _observe(log.write(tmp_path / "decisions.jsonl"), current)
    assert [(w.caller, w.method, w.pattern, w.calls, w.reason) for w in would_deny(observations)] == [
        (CHECKOUT, "GET", "/v1/charges/*", 2, "no-matching-rule")
    ]
    stale = unused_rules(observations, 30)
    # The catch-all's allow rule never decides beside an enforced document: unused too, rightly.
    assert [(u.rule, u.last) for u in stale] == [
        ("old-batch-job", T0),
        ("retired-partner", None),
        ("reads-while-adopting", None),
    ]
    assert unused_rules(observations, 40) == [u for u in stale if u.rule != "old-batch-job"]
    suggestion = suggest(observations, taken=[d.id for d in current.declarations], now=T0)
    (document,) = suggestion.documents
    assert document.id == "shop/payments-suggested"  # shop/payments is taken by the current declarations
    rules = {r.name: r for r in document.rules}
    assert rules["from-shop-checkout"].current_denied == 2
    assert rules["from-billing-auditor"].current_denied == 0
    text = suggestion.files["shop.payments-suggested.yaml"]
    assert "partly new: the current declarations deny 2 of these calls" in text
    assert "already granted by the current declarations" in text
    assert '"/v1/charges/*"  # GET 2; ' in text and "new: the current declarations deny 2 (no-matching-rule)" in text


def test_tests_fail_when_the_suggestion_is_narrowed_or_widened(tmp_path: Path) -> None:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/v1/charges/ch_1001")
    log.call(CHECKOUT, "POST", "/v1/charges")
    log.call(INVOICER, "GET", "/v1/invoices")
    out = _suggest_files(tmp_path, log.write(tmp_path / "decisions.jsonl"))
    assert run_tests([str(out)], now=T0).ok
    path = out / "shop.payments.yaml"
    original = path.read_text()
    path.write_text(original.replace('"POST"', '"PUT"'))  # narrowed by mistake: POST no longer granted
    failed = [r.name for r in run_tests([str(out)], now=T0).results if not r.passed]
    assert failed == ["from-shop-checkout POST /v1/charges"]
    path.write_text(original.replace('"GET"]', '"*"]'))  # widened to every method
    assert not run_tests([str(out)], now=T0).ok
    path.write_text(original.replace(f'id: "{CHECKOUT}"', f'prefix: "spiffe://{TD}/*"'))  # widened to every caller
    assert not run_tests([str(out)], now=T0).ok


def test_command_line(tmp_path: Path) -> None:
    policies, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/v1/charges/ch_1001", time.time() - 60)
    log.call(CHECKOUT, "POST", "/v1/charges", time.time() - 30)
    logfile = log.write(tmp_path / "decisions.jsonl")
    (tmp_path / "decisions.jsonl.1").write_text(log.lines[0][:40] + "\n")
    out = tmp_path / "review"

    done = cli("policy", "suggest", "--from", str(logfile), "--policies", str(policies), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "skipped 1 lines" in done.stdout and "policy test: 4/4 passed" in done.stdout, done.stdout
    assert "they would deny 1 observed calls on 1 routes when enforced" in done.stdout  # POST: no catch-all
    assert cli("policy", "validate", "--strict", str(out)).returncode == 0
    assert cli("policy", "test", str(out)).returncode == 0
    refused = cli(
        "policy", "suggest", "--from", str(logfile), "--policies", str(policies), "--out", str(policies / "new")
    )
    assert refused.returncode == 2 and "inside --policies" in refused.stderr
    missing = cli("policy", "suggest", "--from", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read decision log" in missing.stderr
    stdout = cli("policy", "suggest", "--from", str(logfile), "--json")
    assert stdout.returncode == 0
    assert next(yaml.safe_load_all(stdout.stdout))["spec"]["workload"] == PAYMENTS
    assert json.loads(stdout.stderr)["observed"]["legitimate_calls"] == 2


def test_a_rotated_file_cut_short_keeps_what_was_read(tmp_path: Path) -> None:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    for i in range(200):
        log.call(CHECKOUT, "GET", f"/v1/charges/ch_{1000 + i}", T0 + i)
    whole = gzip.compress("".join(line + "\n" for line in log.lines).encode())
    (tmp_path / "decisions.jsonl.1.gz").write_bytes(whole[: len(whole) // 2])  # the shipper died mid-write
    observations, stats = _observe(with_rotated([str(tmp_path / "decisions.jsonl.1.gz")]))
    assert 0 < stats.decisions < 200 and stats.skipped == 1
    assert "compressed file ends early" in stats.problems[-1]
    assert observations.legitimate == stats.decisions


def test_the_documents_in_the_adoption_guide_validate() -> None:
    guide = (Path(__file__).parents[2] / "authz_server" / "policy" / "README.md").read_text()
    section = guide.split("## From a running mesh to default deny", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```yaml\n")[1:]
    assert len(blocks) == 2  # the dry-run catch-all and the demo's suggestion
    for block in blocks:
        text = block.split("```", 1)[0]
        compiled = compile_snapshot(FileSnapshot((("README.md", text.encode()),), ()))
        assert compiled.policy_set is not None and not compiled.problems, compiled.problems


def _field_paths(record: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in record.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_field_paths(value, (*prefix, key)))
    return out


def test_lines_with_wrong_field_types_are_counted_never_crash_and_never_depend_on_policies(tmp_path: Path) -> None:
    _, current = _policies(tmp_path, CATCH_ALL_DRY_RUN)
    log = LogWriter(current)
    log.call(CHECKOUT, "GET", "/v1/charges/ch_1001")
    log.call(CHECKOUT, "POST", "/v1/charges")
    log.call(PROBER, "GET", "/v1/x", identity_failure=IdentityReason.EXPIRED)
    odd_values: list[Any] = [None, -1, 1e300, float("nan"), "", "spiffe://", [], {}, [1], {"a": 1}, True, "/a/*", "get"]
    rng = random.Random(15)
    records = []
    for _ in range(3000):
        record = json.loads(rng.choice(log.lines))
        for _ in range(rng.randint(1, 3)):
            *parents, key = rng.choice(_field_paths(record))
            target = record
            for parent in parents:
                target = target[parent]
            target[key] = copy.deepcopy(rng.choice(odd_values))
        records.append(record)
    without = Observer(None, now=T0).observe_all(records)
    compared = Observer(current, now=T0).observe_all(records)
    assert without.excluded == compared.excluded and without.legitimate == compared.legitimate
    assert without.excluded[Excluded.MALFORMED] > 0 and without.legitimate > 0
    for observations in (without, compared):
        suggestion = suggest(observations, taken=["shop/payments-adoption"], now=T0)
        assert compile_snapshot(
            FileSnapshot(tuple((n, t.encode()) for n, t in suggestion.files.items()), ())
        ).policy_set
        report_text(suggestion, {"decisions": len(records), "skipped": 0}, 30)
