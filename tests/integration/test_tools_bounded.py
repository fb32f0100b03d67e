"""A tool call never blocks the service: a pathological calculation is a tool error at once."""

from __future__ import annotations

import httpx


def test_a_huge_power_is_a_tool_error_and_the_service_keeps_answering(start_service) -> None:
    service = start_service()
    service.wait_ready()
    # Before the bound, this blocked the event loop for over a minute (/healthz stalled).
    response = httpx.post(
        service.url + "/v1/chat", json={"message": "calc (((9**99)**99)**99)**99"}, timeout=30
    )
    assert response.status_code == 200, response.text
    (call,) = response.json()["tool_calls"]
    assert call["result"].startswith("error: result too large")
    # str() of a 5,001-digit integer raised ValueError: a 500 before, a tool result now.
    response = httpx.post(service.url + "/v1/chat", json={"message": "calc (10**100)**50"})
    assert response.status_code == 200, response.text
    assert response.json()["reply"].startswith("calc: error:")
    assert httpx.get(service.url + "/healthz", timeout=5).status_code == 200
