from authz_server._proto.envoy.service.auth.v3 import external_auth_pb2
from authz_server.call import parse_call


def _request(path: str, **http: object) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.path = path
    for key, value in http.items():
        setattr(request.attributes.request.http, key, value)
    return request


def test_the_query_and_fragment_are_split_off_the_path() -> None:
    assert parse_call(_request("/a/b?x=1&y=2#top")).path == "/a/b"
    assert parse_call(_request("/a/b?x=1&y=2#top")).query == "x=1&y=2"
    assert parse_call(_request("/a#frag?not-a-query")).query == ""
    assert parse_call(_request("/plain")).path == "/plain"


def test_an_empty_request_parses_to_empty_fields_and_a_receive_time() -> None:
    call = parse_call(external_auth_pb2.CheckRequest())
    assert call.source.principal == "" and call.method == "" and call.path == ""
    assert call.received_at > 0


def test_headers_from_header_map_are_used_when_the_headers_map_is_empty() -> None:
    request = _request("/x")
    entry = request.attributes.request.http.header_map.headers.add()
    entry.key, entry.raw_value = "X-Forwarded-Client-Cert", b"By=spiffe://a"
    assert parse_call(request).headers == {"x-forwarded-client-cert": "By=spiffe://a"}


def test_the_view_is_immutable() -> None:
    call = parse_call(_request("/x", method="GET"))
    try:
        call.headers["x"] = "y"  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("headers must not be writable")
