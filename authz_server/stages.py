"""The contracts between the request path and its decision stages.

Each stage is a plain synchronous object doing CPU work only: no I/O, no
awaits, no locks held across calls. That keeps the same decision path usable
from the h2 and grpc.aio transports (on the event loop) and from grpcio's thread-pool transport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from authz_server.call import Call
    from authz_server.identity.result import Identity, IdentityResult
    from authz_server.policy.outcome import PolicyOutcome
    from authz_server.risk.outcome import RiskOutcome

StageT = TypeVar("StageT", covariant=True)

RiskCall = tuple["Call", "Identity", "PolicyOutcome", float, float]
"""What the risk stage assesses: the call, its verified caller, what policy granted, the time, the budget (s)."""


class IdentityStage(Protocol):
    @property
    def version(self) -> str:
        """What the stage was built from (here: the trust bundles' content hash); every stage has one, and its
        `StageSource.status()` reports the same under the key "version"."""
        ...

    def verify(self, call: Call, now: float) -> IdentityResult:
        """Verify the caller from what Envoy forwarded, or say precisely why not."""
        ...


class PolicyStage(Protocol):
    @property
    def version(self) -> str: ...

    def evaluate(self, call: Call, identity: Identity, now: float) -> PolicyOutcome:
        """Default deny: allowed only when a declaration grants this call."""
        ...


class RiskStage(Protocol):
    @property
    def version(self) -> str:
        """The model's version."""
        ...

    def assess(self, call: Call, identity: Identity, policy: PolicyOutcome, now: float, budget_s: float) -> RiskOutcome:
        """Score the call and map the score to an action, within `budget_s` seconds."""
        ...

    def assess_many(self, calls: Sequence[RiskCall]) -> list[RiskOutcome]:
        """`assess` each of (call, identity, policy, now, budget_s), in order, sharing what scoring can share."""
        ...

    def observe(self, call: Call, identity: Identity, policy: PolicyOutcome, risk: RiskOutcome, now: float) -> None:
        """Count a call policy let through (`risk` is what `assess` said of it) in the behavioural state."""
        ...


class StageSource(Protocol[StageT]):
    """Builds one stage from configuration and keeps it current.

    `load` runs once at start and raises (with a message an operator can act
    on) when the stage cannot be built at all. `start` watches the stage's
    inputs (files, the Workload API, ...) from a daemon thread; on a valid
    change it calls `apply` with a new stage object, on an invalid one it logs,
    counts, and keeps the last good stage serving. Stages are immutable: a
    change means a new object, never a mutation.
    """

    def load(self) -> StageT: ...

    def start(self, apply: Callable[[StageT], None]) -> None: ...

    def close(self) -> None: ...

    def status(self) -> Mapping[str, str]:
        """Facts for health and metrics, e.g. {"version": "...", "source": "workload-api", "state": "degraded"}.

        "version" is always present: the loaded stage's `version`, or "" while nothing is loaded yet."""
        ...
