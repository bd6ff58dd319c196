"""The risk stage gives bit-identical outcomes on two source trees: a guard for speed work on serving code.

    .venv/bin/python -m benchmarks.risk_equivalence [--against main] [--scale 0.1] [--hours 30]

A risk-lab site (`authz_server.risklab`: its workloads, pod churn, SVID rotations, a deploy to `/v2/`, a peak,
and every attack kind) is simulated once; the first day trains a site model (as `model train --baseline` does).
Then the same calls (the last hours, attacks mixed in) are replayed through `RiskScorer.assess` and `observe` of
each tree, once with the site model and once with the bundled one, in a process of its own whose `authz_server`
is that tree (`--against REF`: `git archive REF` into a temporary directory; the working tree: this checkout).
Every outcome is written down exactly (score, surprises, features and factor values as float hex, band, action,
alarmed features) and the two files must be equal line for line; the first difference is printed and the exit
status is 1.

The traffic and the model file are made once, by this checkout, and handed to both replays, so a difference is
the serving code's. Both replays use the bundled model of their own tree (`--bundled-from ours` makes both read
this checkout's file instead, when the branch re-bundles it).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0


def prepare(workdir: Path, scale: float, hours: float) -> None:
    """Simulate the site, train its model, write `traffic.jsonl` (the replayed calls) and `site.onnx`."""
    from authz_server.risk.features import facts_from_call
    from authz_server.risklab.attacks import plan_attacks
    from authz_server.risklab.evaluation import schedule_evaluation_day
    from authz_server.risklab.simulator import DAY, Timeline
    from authz_server.risklab.sites import site
    from authz_server.risklab.training import train_site

    spec = site(scale=scale)
    timeline = Timeline(spec)
    day_start = spec.start + DAY
    schedule_evaluation_day(timeline, day_start)
    warm = list(timeline.events(day_start))
    rows = [_row(e) for e in warm]
    calls = [_call(row) for row in rows]
    trained = train_site([facts_from_call(c, i, c.path, c.received_at) for c, i in calls], source="equivalence")
    (workdir / "site.onnx").write_bytes(trained.blob)

    day = list(timeline.events(day_start + hours * HOUR))
    lead = [e for e in warm if e.ts >= day_start - 6 * HOUR]
    _, attacks = plan_attacks(spec, lead + day, day_start, per_kind=3)
    attacks = [e for e in attacks if e.ts < day_start + hours * HOUR]
    replay = list(heapq.merge(warm[-len(warm) // 4 :], day, attacks, key=lambda e: e.ts))
    with (workdir / "traffic.jsonl").open("w") as out:
        for event in replay:
            out.write(json.dumps(_row(event)) + "\n")
    print(f"prepared {len(replay)} calls ({len(attacks)} attack calls); site model from {len(warm)} calls")


def _row(event: Any) -> list[Any]:
    svid = event.svid
    serial = hashlib.sha256(f"{svid.workload}/{svid.replica}/{svid.rotation}".encode()).hexdigest()[:32]
    return [event.ts, event.caller, event.callee, event.method, event.path, event.size, event.address, event.port,
            serial, svid.not_before, svid.not_after]  # fmt: skip


def _call(row: list[Any]) -> tuple[Any, Any]:
    """The Call and Identity the server would have after parse and certificate verification."""
    from types import MappingProxyType

    from authz_server.call import Call, Peer
    from authz_server.identity.result import Identity, Proof
    from authz_server.risklab.sites import TRUST_DOMAIN, spiffe_id

    ts, caller, callee, method, path, size, address, port, serial, not_before, not_after = row
    principal = spiffe_id(caller)
    headers = MappingProxyType({"content-length": str(size)} if size > 0 else {})
    call = Call("eq", Peer(principal, "", address, port), spiffe_id(callee), method, path, "",
                callee.split("/")[1], "https", "HTTP/1.1", headers, MappingProxyType({}), 0, "", ts)  # fmt: skip
    identity = Identity(principal, TRUST_DOMAIN, principal.split(TRUST_DOMAIN, 1)[1], Proof.CERTIFICATE, not_after,
                        not_before, None, serial)  # fmt: skip
    return call, identity


def replay(traffic: Path, site_model: Path, bundled: Path | None, out: Path) -> None:
    """Every call through the risk stage of the `authz_server` this process imports, outcomes written exactly."""
    import authz_server
    from authz_server.policy.outcome import PolicyOutcome, PolicyReason
    from authz_server.risk import AnomalyModel, BehaviourState, RiskConfig, RiskScorer

    rows = [json.loads(line) for line in traffic.open()]
    config = RiskConfig(warmup_s=0)
    with out.open("w") as sink:
        sink.write(f"# authz_server from {Path(authz_server.__file__).parent.parent}\n")
        for name, model in (
            ("site", AnomalyModel.from_bytes(site_model.read_bytes(), "site")),
            ("bundled", AnomalyModel.load(bundled or "")),
        ):
            scorer = RiskScorer(model, config, BehaviourState(config), started_at=rows[0][0])
            for n, row in enumerate(rows):
                call, identity = _call(row)
                # Every 7th call under a rule with its own maxRisk, every 11th under a shadowed declaration: the
                # other branches of the band decision.
                policy = PolicyOutcome(True, PolicyReason.ALLOWED, "eq", normalized_path=call.path,
                                       max_risk=0.5 if n % 7 == 0 else None, risk_shadow=n % 11 == 0)  # fmt: skip
                now = row[0] + 0.002
                outcome = scorer.assess(call, identity, policy, now, 60.0)  # never over budget: outcomes comparable
                scorer.observe(call, identity, policy, outcome, now)
                sink.write(_line(name, n, outcome) + "\n")


def _hex(values: Any) -> str:
    return ",".join(float(v).hex() for v in values)


def _line(name: str, n: int, outcome: Any) -> str:
    factors = ",".join(f"{f.name}={float(f.contribution).hex()}" for f in outcome.factors)
    score = "-" if outcome.score is None else float(outcome.score).hex()
    return (f"{name} {n} {outcome.status} {score} {outcome.band} {outcome.action} {outcome.shadow} "
            f"at={float(outcome.at).hex()} f=[{_hex(outcome.features)}] factors=[{factors}] "
            f"alarmed={','.join(sorted(outcome.alarmed))} {outcome.header_value}")  # fmt: skip


def _tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    tree = into / "tree"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _replay_in(tree: Path, workdir: Path, out: Path, bundled: Path | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(Path(__file__).resolve()), "--replay", str(workdir), "--out", str(out)]
    if bundled is not None:
        command += ["--bundled", str(bundled)]
    subprocess.run(command, check=True, env=env, cwd=workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="main", help="git ref to compare this checkout with (default main)")
    parser.add_argument("--scale", type=float, default=0.1, help="site rates x this (default 0.1)")
    parser.add_argument("--hours", type=float, default=30.0, help="hours of the evaluation day replayed")
    parser.add_argument("--bundled-from", choices=("each", "ours"), default="each")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary directory)")
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bundled", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay is not None:
        replay(args.replay / "traffic.jsonl", args.replay / "site.onnx", args.bundled, args.out)
        return 0

    with tempfile.TemporaryDirectory(prefix="risk-equivalence-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        prepare(workdir, args.scale, args.hours)
        bundled = ROOT / "authz_server" / "risk" / "models" / "default.onnx" if args.bundled_from == "ours" else None
        base = Path(tempfile.mkdtemp(dir=scratch))
        _replay_in(_tree(args.against, base), workdir, workdir / "theirs.txt", bundled)
        _replay_in(ROOT, workdir, workdir / "ours.txt", bundled)
        theirs = (workdir / "theirs.txt").read_text().splitlines()
        ours = (workdir / "ours.txt").read_text().splitlines()
        print(f"{theirs[0]}\n{ours[0]}")
        differ = [(a, b) for a, b in zip(theirs[1:], ours[1:], strict=False) if a != b]
        if len(theirs) != len(ours) or differ:
            print(f"DIFFERENT: {len(differ)} of {len(ours) - 1} outcomes ({len(theirs) - 1} against {args.against})")
            if differ:
                print(f"  {args.against}: {differ[0][0]}\n  this tree: {differ[0][1]}")
            return 1
        alarmed = sum(" annotate " in line or " deny " in line for line in ours)
        print(f"identical: {len(ours) - 1} outcomes ({alarmed} annotated or denied) against {args.against}, "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
