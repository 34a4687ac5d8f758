import ipaddress

import pytest
from yarl import URL

from services.runner.outbound import AddressPolicy, GuardedResolver, OutboundRefused

DEFAULT = AddressPolicy([])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "224.0.0.1",
    ],
)
def test_private_addresses_refused(address: str) -> None:
    with pytest.raises(OutboundRefused, match="the operator has not allowed it"):
        DEFAULT.check("host", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    DEFAULT.check("host", ipaddress.ip_address(address))


def test_allow_list() -> None:
    policy = AddressPolicy(["127.0.0.2/32", "10.0.0.0/8"])
    policy.check("h", ipaddress.ip_address("127.0.0.2"))
    policy.check("h", ipaddress.ip_address("10.9.9.9"))
    with pytest.raises(OutboundRefused):
        policy.check("h", ipaddress.ip_address("127.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/",
        "http://[::1]:8080/",
        "http://10.0.0.1/",
    ],
)
def test_ip_literals_checked_before_any_connection(url: str) -> None:
    with pytest.raises(OutboundRefused):
        DEFAULT.check_literal(URL(url))


def test_names_are_left_to_the_resolver() -> None:
    DEFAULT.check_literal(URL("http://example.com/"))


async def test_resolver_refuses_a_name_for_loopback() -> None:
    with pytest.raises(OutboundRefused, match=r"localhost is 127\.0\.0\.1"):
        await GuardedResolver(DEFAULT).resolve("localhost", 80)
