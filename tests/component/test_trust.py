"""The client's TLS trust and proxy against the real simulator over TLS, with a private CA
made at test time: what each certificate refusal is called, and that a proxy is used only
when the config names it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from refreshd.attempt import probe, target_of
from refreshd.client import Client, client_for
from refreshd.config import validate_config
from refreshd.core.vicidial import Outcome, Transport, version_params
from refreshd.simulator import Simulator
from tests.support.config import GOOD_PASSWORD, GOOD_USER
from tests.support.proxy import LoopbackProxy, running_proxy
from tests.support.simulator import running_simulator
from tests.support.tls import PrivateCa
from tests.support.waiting import eventually

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCa:
    return PrivateCa(tmp_path_factory.mktemp("other-ca"), "another CA")


@pytest.fixture
def tls_sim(ca: PrivateCa) -> Iterator[Simulator]:
    with running_simulator(tls=ca.server_context("good")) as sim:
        yield sim


@pytest.fixture
def proxy() -> Iterator[LoopbackProxy]:
    with running_proxy() as running:
        yield running


def version(url: str, *, verify: bool | str, proxy: str | None = None) -> Transport | int:
    client = Client(timeout=TIMEOUT, proxy=proxy)
    try:
        raw = client.call(url, version_params(), verify=verify)
    finally:
        client.close()
    return raw.transport or raw.status or 0


def test_a_server_signed_by_the_ca_file_is_trusted(tls_sim: Simulator, ca: PrivateCa) -> None:
    assert version(tls_sim.api_url, verify=str(ca.ca)) == 200


def test_without_the_ca_file_the_certificate_is_untrusted_and_nothing_is_sent(
    tls_sim: Simulator,
) -> None:
    assert version(tls_sim.api_url, verify=True) is Transport.TLS_UNTRUSTED
    eventually(lambda: tls_sim.stats()["tls_refused"] == 1, what="the handshake refused")
    assert tls_sim.stats()["requests"] == {}


def test_another_ca_file_does_not_trust_it(tls_sim: Simulator, other_ca: PrivateCa) -> None:
    assert version(tls_sim.api_url, verify=str(other_ca.ca)) is Transport.TLS_UNTRUSTED


@pytest.mark.parametrize(
    ("san", "expired", "refusal"),
    [
        ("DNS:dialer.example.com", False, Transport.TLS_NAME_MISMATCH),
        ("IP:127.0.0.2", False, Transport.TLS_NAME_MISMATCH),
        ("IP:127.0.0.1", True, Transport.TLS_EXPIRED),
    ],
)
def test_a_wrong_name_or_an_expired_certificate_is_told_apart(
    ca: PrivateCa, san: str, expired: bool, refusal: Transport
) -> None:
    context = ca.server_context(f"{san.replace(':', '-')}-{expired}", san=san, expired=expired)
    with running_simulator(tls=context) as sim:
        assert version(sim.api_url, verify=str(ca.ca)) is refusal
        assert sim.stats()["requests"] == {}


def _config(sim: Simulator, tmp_path: Path, **client: object) -> dict[str, object]:
    return {
        "client": client,
        "credentials": {"c": {"user": GOOD_USER, "password": GOOD_PASSWORD}},
        "servers": [
            {"name": "s", "api_url": sim.api_url, "credentials": "c", "windows": ["00:00-01:00"]}
        ],
    }


def test_a_servers_ca_file_wins_over_the_clients(
    tls_sim: Simulator, ca: PrivateCa, other_ca: PrivateCa, tmp_path: Path
) -> None:
    data = _config(tls_sim, tmp_path, ca_file=str(other_ca.ca))
    data["servers"][0]["ca_file"] = str(ca.ca)  # type: ignore[index]
    config = validate_config(data, environ={})
    client = client_for(config)
    try:
        result, _ = probe(client, target_of(config, config.servers[0]))
    finally:
        client.close()
    assert result.ok, result


def test_a_refused_certificate_is_the_suspending_outcome_on_the_probe(
    tls_sim: Simulator, tmp_path: Path
) -> None:
    config = validate_config(_config(tls_sim, tmp_path), environ={})
    client = client_for(config)
    try:
        result, _ = probe(client, target_of(config, config.servers[0]))
    finally:
        client.close()
    assert result.outcome is Outcome.TLS_REJECTED
    assert "ca_file" in result.detail


def test_calls_go_through_the_configured_proxy_tunnel_with_its_credentials(
    tls_sim: Simulator, ca: PrivateCa, proxy: LoopbackProxy
) -> None:
    with_login = proxy.url.replace("http://", "http://puser:Pr0xy-pass@")
    assert version(tls_sim.api_url, verify=str(ca.ca), proxy=with_login) == 200
    assert proxy.seen == [f"CONNECT 127.0.0.1:{tls_sim.port}"]
    assert proxy.authorized == 1


def test_plain_http_goes_through_the_proxy_too(simulator: Simulator, proxy: LoopbackProxy) -> None:
    assert version(simulator.api_url, verify=True, proxy=proxy.url) == 200
    assert proxy.seen == [f"POST {simulator.api_url}"]


def test_the_environments_proxy_variables_are_ignored(
    simulator: Simulator, proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    assert version(simulator.api_url, verify=True) == 200
    assert proxy.seen == []


def test_a_call_through_the_proxy_is_still_cut_at_its_deadline(
    tls_sim: Simulator, ca: PrivateCa, proxy: LoopbackProxy
) -> None:
    # The headers a byte at a time: no per-read time-out trips, only the total deadline.
    tls_sim.set_fault("trickle_headers", interval=0.3)
    client = Client(timeout=1.0, proxy=proxy.url)
    try:
        raw = client.call(tls_sim.api_url, version_params(), verify=str(ca.ca))
    finally:
        client.close()
    assert raw.transport is Transport.TIMEOUT
    assert raw.elapsed < 5.0  # the 1 s deadline, with room for a loaded machine
    assert proxy.seen == [f"CONNECT 127.0.0.1:{tls_sim.port}"]


@pytest.mark.parametrize("status", [407, 501, 502])
def test_a_proxy_refusing_the_tunnel_is_reported_with_its_status(
    tls_sim: Simulator, ca: PrivateCa, status: int
) -> None:
    with running_proxy(refuse=status) as refusing:
        client = Client(timeout=TIMEOUT, proxy=refusing.url)
        try:
            raw = client.call(tls_sim.api_url, version_params(), verify=str(ca.ca))
        finally:
            client.close()
        assert refusing.seen == [f"CONNECT 127.0.0.1:{tls_sim.port}"]
    assert (raw.transport, raw.status) == (Transport.PROXY_REFUSED, status)
    assert tls_sim.stats()["requests"] == {}
