"""Route templates: ids folded out of paths, bounded whatever the path."""

from __future__ import annotations

import pytest

from authz_server.routes import MAX_SEGMENTS, fold, route_template


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/orders/1234/items", "/orders/{id}/items"),
        ("/users/3f2b8a9c-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "/users/{id}"),
        ("/v1/products/SKU-01234", "/v1/products/{id}"),
        ("/v1/charges/ch_1002", "/v1/charges/{id}"),
        ("/blobs/5f2a9c01e3", "/blobs/{id}"),
        ("/tokens/aGVsbG8gd29ybGQx", "/tokens/{id}"),
        ("/reports/2026-11-27/summary", "/reports/{id}/summary"),
        ("/files/invoice-000187.pdf", "/files/{id}"),
        # Words, versions and short alphanumerics stay part of the route.
        ("/v2/products", "/v2/products"),
        ("/api/v1/oauth2/token", "/api/v1/oauth2/token"),
        ("/v1/getAccountSettingsForUser", "/v1/getAccountSettingsForUser"),
        ("/healthz", "/healthz"),
        ("/", "/"),
    ],
)
def test_identifiers_fold_and_words_stay(path: str, template: str) -> None:
    assert route_template(path) == template


def test_the_folded_ids_come_back_in_order() -> None:
    assert fold("/v1/orders/1234/items/SKU-0042") == ("/v1/orders/{id}/items/{id}", ("1234", "SKU-0042"))


def test_a_hostile_path_gives_a_bounded_template() -> None:
    long_segment = "/files/" + "a" * 60_000
    template, ids = fold(long_segment)
    assert template == "/files/{id}" and len(ids[0]) == 64

    deep = "/x" * 30_000
    template, _ = fold(deep)
    assert template.count("/") == MAX_SEGMENTS + 1 and template.endswith("/{more}")
    assert len(template) < 4096


@pytest.mark.parametrize(
    ("path", "template"),
    [
        # A number in Arabic-Indic digits is an id, a word of non-ASCII letters is not.
        ("/\u00fcr\u00fcn/\u0661\u0662\u0663", "/\u00fcr\u00fcn/{id}"),
        ("/area/m²", "/area/m²"),  # a superscript is a digit but no number: the word stays
        ("/orders/0042", "/orders/{id}"),
        ("/a-b_c/x.y", "/a-b_c/x.y"),
    ],
)
def test_digits_and_letters_of_any_script_fold_alike(path: str, template: str) -> None:
    assert route_template(path) == template
