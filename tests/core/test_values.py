"""The value classes built on every call stay frozen dataclasses after `fast_init` gives them a quicker __init__."""

from __future__ import annotations

import dataclasses

import pytest

from authz_server.call import Peer
from authz_server.policy.outcome import Mode, PolicyOutcome, PolicyReason, RiskTimeoutAction
from authz_server.risk.features import CallFacts
from authz_server.risk.outcome import RiskAction, RiskFactor, RiskOutcome, RiskStatus
from authz_server.values import fast_init


def test_fields_defaults_and_keywords_are_those_the_dataclass_declares() -> None:
    outcome = PolicyOutcome(True, PolicyReason.ALLOWED, "v1", rule="r")
    assert (outcome.document, outcome.rule, outcome.mode) == (None, "r", Mode.ENFORCE)
    assert outcome.on_risk_timeout is RiskTimeoutAction.ALLOW
    assert outcome == PolicyOutcome(allowed=True, reason=PolicyReason.ALLOWED, version="v1", rule="r")
    assert hash(outcome) == hash(PolicyOutcome(True, PolicyReason.ALLOWED, "v1", None, "r"))
    assert repr(Peer("p", "", "10.0.0.1", 1)) == "Peer(principal='p', certificate='', address='10.0.0.1', port=1)"


def test_wrong_arguments_are_refused_as_python_refuses_them() -> None:
    with pytest.raises(TypeError, match="reason"):
        PolicyOutcome(True)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Peer("p", "", "a", 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Peer("p", "", "a", port=1, principal="q")  # type: ignore[misc]


def test_instances_stay_immutable_and_replace_still_works() -> None:
    peer = Peer("p", "cert", "10.0.0.1", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        peer.certificate = ""  # type: ignore[misc]
    assert dataclasses.replace(peer, certificate="") == Peer("p", "", "10.0.0.1", 1)


def test_classes_it_cannot_serve_are_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="frozen, slotted"):

        @fast_init
        @dataclasses.dataclass(frozen=True)
        class NoSlots:
            a: int

    with pytest.raises(TypeError, match="not a plain positional field"):

        @fast_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Factory:
            a: list[int] = dataclasses.field(default_factory=list)


def test_a_risk_outcome_still_leaves_its_call_facts_out_of_equality_and_repr() -> None:
    # RiskOutcome declares `facts` with compare=False, repr=False: the outcome of two calls that read alike is the
    # same outcome, and a log of repr() does not spill what was read of the call.
    facts = CallFacts(1.0, "spiffe://td/a", "spiffe://td/b", "/x/{id}", "7", "GET", -1, "10.0.0.1", "ab", None, None)
    scored = RiskOutcome(RiskStatus.SCORED, 0.25, (RiskFactor("rate_burst", 1.5),), "m1", facts=facts)
    assert scored == RiskOutcome(RiskStatus.SCORED, 0.25, (RiskFactor("rate_burst", 1.5),), "m1")
    assert scored.facts is facts
    assert "10.0.0.1" not in repr(scored)
    assert (scored.band, scored.action, scored.alarmed) == ("", RiskAction.ALLOW, frozenset())
    with pytest.raises(dataclasses.FrozenInstanceError):
        scored.score = 0.0  # type: ignore[misc]
