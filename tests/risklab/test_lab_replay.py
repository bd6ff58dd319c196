"""Simulated calls as real CheckRequests through the Authorizer `serve` builds; attacks granted; `model evaluate`."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509

from authz_server.cli import main
from authz_server.risk import AnomalyModel
from authz_server.risklab.attacks import KINDS, plan_attacks
from authz_server.risklab.requests import CertificateCache, LabServer, check_request, lab_ca, read_verdicts
from authz_server.risklab.simulator import DAY, Timeline
from authz_server.risklab.sites import site, spiffe_id


def test_a_call_becomes_the_check_request_envoy_sends_with_a_real_svid_of_its_replica_and_rotation() -> None:
    spec = site(scale=0.05, svid_lifetimes=(86400.0,))
    events = [e for e in Timeline(spec).events(spec.start + 6 * 3600) if e.size]
    certificates = CertificateCache(lab_ca(spec.start))
    event = events[0]
    request = check_request(event, "r-1", certificates.pem(event.svid))
    attributes = request.attributes
    assert attributes.source.address.socket_address.address == event.address
    assert attributes.source.principal == spiffe_id(event.caller)
    assert attributes.destination.principal == spiffe_id(event.callee)
    assert abs(attributes.request.time.seconds + attributes.request.time.nanos / 1e9 - event.ts) < 1e-6
    assert attributes.request.http.headers["content-length"] == str(event.size)
    leaf = x509.load_pem_x509_certificate(urllib.parse.unquote(attributes.source.certificate).encode())
    assert leaf.not_valid_before_utc.timestamp() == int(event.svid.not_before)
    assert leaf.not_valid_after_utc.timestamp() - leaf.not_valid_before_utc.timestamp() == pytest.approx(86400, abs=1)
    # One certificate per (workload, replica, rotation): the same SVID twice is the same serial.
    assert certificates.pem(event.svid) == attributes.source.certificate
    assert certificates.minted == 1


def test_every_benign_and_every_attack_call_is_granted_by_the_sites_declarations(tmp_path: Path) -> None:
    spec = site(scale=0.03)
    timeline = Timeline(spec)
    day_start = spec.start + DAY / 2
    lead = list(timeline.events(day_start))
    day = list(timeline.events(day_start + DAY))
    episodes, attacks = plan_attacks(spec, lead + day, day_start, per_kind=2)
    assert Counter(e.kind for e in episodes) == dict.fromkeys(KINDS, 2)
    assert {e.label for e in attacks} == set(KINDS)
    certificates = CertificateCache(lab_ca(spec.start))
    with LabServer(tmp_path, spec, certificates, risk={"enabled": False}) as server:
        server.replay(sorted(lead + day + attacks, key=lambda e: e.ts))
    verdicts = Counter((v.verdict, v.reason) for _, v in read_verdicts(server.decision_log))
    assert verdicts == {("allow", "allowed"): len(lead) + len(day) + len(attacks)}


def test_stolen_svids_are_used_from_outside_the_workloads_subnets_with_the_pods_serial() -> None:
    spec = site(scale=0.05)
    timeline = Timeline(spec)
    day = list(timeline.events(spec.start + DAY))
    _, attacks = plan_attacks(spec, day, spec.start, per_kind=6, kinds=["stolen-svid"])
    pods = {(e.caller, e.svid) for e in day}
    for event in attacks:
        assert not any(event.address.startswith(s + ".") for s in spec.workload(event.caller).subnets)
        assert event.svid.not_before <= event.ts < event.svid.not_after
    assert any((e.caller, e.svid) in pods for e in attacks)  # the same certificate serial, from two addresses


@pytest.mark.slow
def test_evaluate_reports_both_models_every_kind_and_benign_rates(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["model", "evaluate", "--scale", "0.03", "--warm-days", "1", "--lead-hours", "1", "--per-kind", "1",
                 "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in report["results"]] == ["bundled", "site-trained"]
    bundled, trained = (r["model_version"] for r in report["results"])
    assert bundled == AnomalyModel.load("").version and trained.startswith("surprise-") and trained != bundled
    assert report["day_calls"] > 2000 and report["attack_calls"] > 0
    for result in report["results"]:
        assert result["benign_policy_denied"] == 0
        assert 0 <= result["deny_fpr"] <= result["fpr"] <= 1
        kinds = {k["kind"]: k for k in result["kinds"]}
        assert set(kinds) == set(KINDS)
        for k in kinds.values():
            assert k["episodes"] == 1 and k["calls"] > 0 and k["policy_denied"] == 0
            assert k["alarmed"] >= k["denied"] and k["episodes_caught"] <= 1


def test_evaluate_refuses_nonsense_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "evaluate", "--scale", "0"]) == 2
    assert "--scale must be > 0" in capsys.readouterr().err
    assert main(["model", "evaluate", "--model", "/nonexistent.onnx"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_synth_writes_the_decision_log_model_train_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "site"
    assert main(["model", "synth", "--out", str(out), "--days", "0.5", "--scale", "0.05", "--vary", "--seed", "4"]) == 0
    decisions = (out / "decisions.jsonl").read_text().splitlines()
    events = (out / "events.jsonl").read_text().splitlines()
    assert len(decisions) == len(events) > 2000
    first = json.loads(decisions[0])
    assert first["verdict"] == "allow" and first["source"]["spiffe_id"].startswith("spiffe://example.org/ns/")
    model = tmp_path / "site.onnx"
    assert main(["model", "train", "--baseline", str(out / "decisions.jsonl"), "--out", str(model)]) == 0
    assert model.stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("lifetime", [3600.0, 86400.0])
def test_the_bundled_model_denies_no_benign_call_of_busy_batch_jobs_on_a_site_it_never_saw(
    tmp_path: Path, lifetime: float
) -> None:
    """At full volume, from a cold start, whatever the SVID lifetime: the night batch jobs that page through
    thousands of ids a night (120 a minute) are the busiest edges a site has, and the bundled model has no baseline
    that says so (a diurnal workload beside them takes the day's deploys and peaks). They may be annotated; none of
    their calls is denied."""
    spec = site(seed=29, svid_lifetimes=(lifetime,))
    batches = {"ml/trainer", "analytics/reporting", "analytics/exporter", "billing/invoicer", "shop/recommendations"}
    spec = dataclasses.replace(spec, workloads=tuple(w for w in spec.workloads if w.name in batches))
    events = list(Timeline(spec).events(spec.start + DAY))
    assert len(events) > 10_000
    with LabServer(tmp_path / "server", spec, CertificateCache(lab_ca(spec.start))) as server:
        server.replay(events)
    verdicts = [v for _, v in read_verdicts(server.decision_log)]
    assert len(verdicts) == len(events)
    assert not [v for v in verdicts if v.risk_denied]
