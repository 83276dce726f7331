"""Metrics.serve(): a real HTTP /metrics endpoint on loopback, scraped over a socket."""

from __future__ import annotations

import datetime as dt
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudha import ConfigurationError, Evidence
from cloudha.metrics import Metrics

pytestmark = pytest.mark.integration


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.headers.get("Content-Type", ""), response.read().decode()


def test_serve_on_port_0_answers_metrics_over_http() -> None:
    metrics = Metrics()
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    details = {"fencer": "PowerFencer", "outcome": "FENCED", "seconds": 1.5}
    metrics.record(Evidence("fence", 1.0, at, "ms1", "h1", "vm1", "fenced", details))
    endpoint = metrics.serve(0, address="127.0.0.1")
    try:
        assert endpoint.port > 0
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        content_type, body = scrape(endpoint.url)
        assert content_type.startswith("text/plain")
        found = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        key = frozenset({"path": "chain", "fencer": "PowerFencer", "outcome": "FENCED"}.items())
        assert found[("cloudha_fences_total", key)] == 1
        # A later record shows at the next scrape: the endpoint serves the live registry.
        metrics.record(Evidence("fence", 2.0, at, "ms1", "h2", "vm2", "fenced", details))
        _, body = scrape(endpoint.url)
        assert (
            'cloudha_fences_total{fencer="PowerFencer",outcome="FENCED",path="chain"} 2.0' in body
        )
    finally:
        endpoint.close()
    endpoint.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):  # the port is released: nobody answers
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=2).close()


def test_serve_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support; the endpoint must be tested on ::1")
    metrics = Metrics()
    with metrics.serve(0, address="::1") as endpoint:
        assert endpoint.url == f"http://[::1]:{endpoint.port}/metrics"
        _, body = scrape(endpoint.url)
        assert "cloudha_fence_escalations_total 0.0" in body


def test_a_port_in_use_is_a_one_line_error_naming_address_and_port() -> None:
    metrics = Metrics()
    with metrics.serve(0) as endpoint, pytest.raises(ConfigurationError) as caught:
        Metrics().serve(endpoint.port, address="127.0.0.1")
    message = str(caught.value)
    assert message.startswith(
        f"the metrics endpoint cannot listen on 127.0.0.1 port {endpoint.port}:"
    )
    assert "\n" not in message
