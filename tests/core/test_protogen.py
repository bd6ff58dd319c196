from authz_server.protogen import stale_files


def test_generated_code_matches_the_proto_sources() -> None:
    stale = stale_files()
    assert not stale, f"regenerate with `python -m authz_server.protogen`: {stale}"
