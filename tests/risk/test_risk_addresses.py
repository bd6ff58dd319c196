"""Source addresses become the subnets `source_new` compares: read exactly as the standard library reads them."""

from __future__ import annotations

import pytest

from authz_server.risk.features import subnets


@pytest.mark.parametrize(
    ("address", "nets"),
    [
        ("10.1.2.77", ("10.1.2.0/24", "10.1.0.0/16")),
        ("0.0.0.0", ("0.0.0.0/24", "0.0.0.0/16")),
        ("255.255.255.255", ("255.255.255.0/24", "255.255.0.0/16")),
        ("fd00:1:2:3::17", ("fd00:1:2:3::/64", "fd00:1:2::/48")),
        ("::ffff:10.1.2.3", ("::/64", "::/48")),  # IPv4-mapped: an IPv6 address
        # Not an address: no subnet, so no novelty is judged on it.
        ("010.1.2.3", ("", "")),  # a leading zero (octal to some parsers) is refused, as ipaddress refuses it
        ("10.1.2.256", ("", "")),
        ("10.1.2", ("", "")),
        ("10.1.2.3.4", ("", "")),
        ("10.1.2.3 ", ("", "")),
        ("\u0661\u0660.1.2.3", ("", "")),  # Arabic-Indic digits
        ("", ("", "")),
        ("unix:/var/run/envoy.sock", ("", "")),
    ],
)
def test_an_address_gives_its_narrow_and_wide_subnet_or_none(address: str, nets: tuple[str, str]) -> None:
    assert subnets(address) == nets
