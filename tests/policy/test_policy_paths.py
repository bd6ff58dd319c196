"""Path normalisation: what Envoy's normalize_path + merge_slashes would produce, and what is refused."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz_server.policy.paths import normalize_path


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/v1/charges", "/v1/charges"),
        ("/", "/"),
        ("/v1/charges/", "/v1/charges/"),
        ("/v1/charges/../admin", "/v1/admin"),
        ("/v1/./charges", "/v1/charges"),
        ("/v1/charges/.", "/v1/charges/"),
        ("/v1/charges/..", "/v1/"),
        ("//admin", "/admin"),
        ("/v1///charges//x", "/v1/charges/x"),
        ("/v1/%2e%2e/admin", "/admin"),
        ("/v1/%2E%2E/admin", "/admin"),
        ("/v1/.%2e/admin", "/admin"),
        ("/v1/%2e/charges", "/v1/charges"),
        ("/%7Euser/%41%62c", "/~user/Abc"),
        ("/v1/%e2%82%ac", "/v1/%E2%82%AC"),  # not unreserved: stays encoded, hex upper-cased
        ("/v1/%252e%252e/admin", "/v1/%252e%252e/admin"),  # double encoding is data, not a dot segment
        ("/v1/a%20b", "/v1/a%20b"),
    ],
)
def test_normalises_like_envoy(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "/v1%2Fadmin",  # encoded slash: some upstreams decode it into a separator
        "/v1%2fadmin",
        "/v1%5Cadmin",  # encoded backslash
        "/v1\\admin",
        "/v1/public/..;/admin",  # Tomcat/Spring read ..; as ..
        "/v1/charges;jsessionid=1",
        "/..",
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/%2e%2e/etc",
        "v1/charges",
        "",
        "*",
        "/v1/%zz",
        "/v1/%4",
        "/v1/a b",
        "/v1/\x00",
        "/v1/caf\u00e9",
        "/v1/\x7f",
    ],
)
def test_refuses_what_upstreams_read_differently(raw: str) -> None:
    assert normalize_path(raw) is None


segment = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", "a", "v1", "admin", "%41", "%7e", "%2F", ";x", "%25", "b.c"]),
    st.text(alphabet="abcXYZ019-._~%2eEfF", min_size=0, max_size=6),
)
raw_paths = st.lists(segment, min_size=0, max_size=8).map(lambda parts: "/" + "/".join(parts))


@given(raw_paths)
def test_normal_form_is_a_fixed_point(raw: str) -> None:
    normal = normalize_path(raw)
    if normal is not None:
        assert normalize_path(normal) == normal


@given(raw_paths)
def test_normal_form_has_no_dot_segments_empty_segments_or_decodable_escapes(raw: str) -> None:
    normal = normalize_path(raw)
    if normal is None:
        return
    assert normal.startswith("/")
    inner = normal[1:].split("/")
    body = inner[:-1]  # a trailing empty segment (trailing slash) is kept
    assert "" not in body
    assert "." not in inner and ".." not in inner
    for escape in re.findall(r"%(..)", normal):
        assert escape == escape.upper()
        assert chr(int(escape, 16)) not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        assert escape not in ("2F", "5C")


@given(raw_paths)
def test_refused_exactly_when_an_ambiguity_is_present(raw: str) -> None:
    ambiguous = ";" in raw or re.search(r"%(2f|2F|5c|5C)", raw) is not None or re.search(r"%(?![0-9a-fA-F]{2})", raw)
    if ambiguous:
        assert normalize_path(raw) is None
