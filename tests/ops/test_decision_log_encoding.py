"""The decision log's text: UTF-8 as sent, one line per decision, and nothing lost to a string JSON cannot carry."""

from __future__ import annotations

import json
from pathlib import Path

from authz_server.audit.log import encode_line
from tests.ops.ops_support import BILLING, Workspace, decision_id, read_lines, run_log


def test_non_ascii_values_are_written_as_utf8_and_control_characters_escaped(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    path = tmp_path / "decisions.jsonl"
    log = run_log(path, headers=("user-agent",))
    authorizer = workspace.authorizer(log)
    agent = "Größe/1.0 \u2603 \x7f"
    request = workspace.request(BILLING, "GET", "/v1/charges/42", headers={"user-agent": agent})
    made = decision_id(authorizer.check(request))
    log.close()

    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert agent.encode() in raw  # UTF-8 as sent, not \u-escaped
    (line,) = read_lines(path)
    assert line["decision_id"] == made
    assert line["request"]["headers"]["user-agent"] == agent


def test_a_string_that_is_not_valid_unicode_is_still_written_as_one_json_line() -> None:
    # A file name's undecodable byte reaches Python as a lone surrogate escape; UTF-8 cannot hold it.
    record = {"policy": {"document": "team/\udcffpolicy"}, "ts": 1.5, "line": "a\nb"}
    encoded = encode_line(record)
    assert b"\n" not in encoded
    assert json.loads(encoded) == {"policy": {"document": "team/\udcffpolicy"}, "ts": 1.5, "line": "a\nb"}


def test_numbers_read_back_as_the_same_values() -> None:
    record = {"score": 2.9802322e-08, "ts": 1795000000.123456, "size": -1, "factors": [0.336042, 1e-06], "n": None}
    assert json.loads(encode_line(record)) == record
