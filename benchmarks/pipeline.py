"""The decision pipeline the benchmarks measure, built from whichever stages this tree has.

Identity and policy are always the real stages, built by their
`source(config)` as serve.py builds them. Risk and the decision log are the
real ones when this tree has them (`authz_server.risk.source`,
`authz_server.audit.DecisionLog`) and are switched off, and said to be,
otherwise. Every result names what ran (`Pipeline.stages`), so a number is
never quoted for a pipeline it did not measure.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authz_server.audit import DecisionLog
from authz_server.audit.config import LogConfig
from authz_server.authorizer import Authorizer, DecisionSink, Runtime, StageTimings
from authz_server.call import Call
from authz_server.decision import Decision
from authz_server.identity import source as identity_source
from authz_server.identity.config import IdentityConfig, TrustDomainConfig
from authz_server.policy import source as make_policy_source
from authz_server.policy.config import PolicyConfig
from authz_server.risk import source as make_risk_source
from authz_server.risk.config import RiskConfig
from authz_server.stages import PolicyStage, RiskStage
from benchmarks.workload import TRUST_DOMAIN, Workload

log = logging.getLogger("benchmarks.pipeline")

STAGES = ("parse", "identity", "policy", "risk", "response")


class TimingSink:
    """A DecisionSink keeping each call's stage timings in preallocated arrays (no allocation per call).

    When `inner` is given (the real decision log), every decision is passed on too,
    so its cost per call is part of what is measured.
    """

    def __init__(self, capacity: int, inner: DecisionSink | None = None) -> None:
        self.capacity = capacity
        self.columns = {name: array("d", bytes(8 * capacity)) for name in STAGES}
        self._parse, self._identity, self._policy, self._risk, self._response = self.columns.values()
        self.count = 0
        self.allowed = 0
        self._inner = inner

    def record(self, call: Call, decision: Decision, timings: StageTimings) -> None:
        i = self.count
        if i < self.capacity:
            self._parse[i] = timings.parse_us
            self._identity[i] = timings.identity_us
            self._policy[i] = timings.policy_us
            self._risk[i] = timings.risk_us
            self._response[i] = timings.response_us
            self.count = i + 1
        if decision.verdict.lets_through:
            self.allowed += 1
        if self._inner is not None:
            self._inner.record(call, decision, timings)

    def stage_samples(self) -> dict[str, list[float]]:
        n = min(self.count, self.capacity)
        return {name: column[:n].tolist() for name, column in self.columns.items()}

    def reset(self) -> None:
        self.count = 0
        self.allowed = 0


@dataclass
class Pipeline:
    authorizer: Authorizer
    sink: TimingSink
    stages: dict[str, str]
    """Stage name -> 'real' or 'off (why)'."""
    closers: list[Callable[[], None]]

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                log.exception("closing a benchmark stage failed")


def write_inputs(workload: Workload, directory: Path) -> tuple[Path, Path]:
    """The trust bundle and the declarations, as files the real stage sources load."""
    directory.mkdir(parents=True, exist_ok=True)
    bundle = workload.certs.write_bundle(directory / "bundle.pem")
    policies = directory / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "payments.yaml").write_text(workload.declarations_yaml())
    return bundle, policies


def build_pipeline(
    workload: Workload,
    directory: Path,
    capacity: int,
    *,
    risk: bool = True,
    decision_log: bool = True,
) -> Pipeline:
    """An Authorizer over the real stages available in this tree, recording timings into a TimingSink."""
    bundle, policies = write_inputs(workload, directory)
    return assemble(bundle, policies, directory / "decisions.jsonl", capacity, risk=risk, decision_log=decision_log)


def assemble(
    bundle: Path,
    policies: Path,
    decisions: Path,
    capacity: int,
    *,
    risk: bool = True,
    decision_log: bool = True,
) -> Pipeline:
    """The pipeline over a trust bundle file and a declarations directory (see build_pipeline)."""
    closers: list[Callable[[], None]] = []
    stages = {"identity": "real"}
    identity_stage = identity_source(
        IdentityConfig(trust_domains={TRUST_DOMAIN: TrustDomainConfig(bundle=str(bundle))})
    ).load()

    policy_source = make_policy_source(PolicyConfig(paths=(str(policies),)))
    policy_stage: PolicyStage = policy_source.load()
    closers.append(policy_source.close)
    stages["policy"] = "real"

    risk_stage: RiskStage | None = None
    stages["risk"] = "off"
    if risk:
        risk_source = make_risk_source(RiskConfig())
        risk_stage = risk_source.load()
        closers.append(risk_source.close)
        stages["risk"] = "real"

    inner: DecisionSink | None = None
    stages["decision log"] = "off"
    if decision_log:
        decisions_log = DecisionLog(LogConfig(decisions=str(decisions)))
        decisions_log.start()
        closers.append(decisions_log.close)
        inner = decisions_log
        stages["decision log"] = "real (file)"

    sink = TimingSink(capacity, inner)
    runtime = Runtime(identity=identity_stage, policy=policy_stage, risk=risk_stage)
    return Pipeline(Authorizer(runtime, sink), sink, stages, closers)
