"""Client API keys against real processes: two replicas sharing one real redis-server.

The keys file is laid out as the kubelet mounts a Secret (`keys -> ..data/keys`, `..data` a link
to a timestamped directory) and rotated as the kubelet rotates it (a new directory, then an
atomic swap of `..data`). Every key contains the tier's SECRET, so the session-wide check in
conftest (`no_secret_in_any_output`) fails if any key reaches any log line.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import SECRET, Redis, Service, wait_until

ALPHA_KEY = f"{SECRET}-alpha-1"
BETA_KEY = f"{SECRET}-beta-1"
ALPHA_ROTATED = f"{SECRET}-alpha-2"
WRONG_KEY = f"{SECRET}-nobody"
CHALLENGE = 'Bearer realm="agent"'


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class SecretVolume:
    """A directory laid out and updated like a Kubernetes Secret volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._version = 0

    @property
    def path(self) -> Path:
        return self.root / "keys"

    def write(self, text: str) -> None:
        self._version += 1
        data = self.root / f"..2026_12_03_00_00_{self._version:02d}"
        data.mkdir()
        (data / "keys").write_text(text)
        staged = self.root / "..data_tmp"
        staged.symlink_to(data.name)
        staged.replace(self.root / "..data")  # rename(2): atomic, as the kubelet does it
        if not self.path.is_symlink():
            self.path.symlink_to("..data/keys")


@pytest.fixture
def replicas(tmp_path: Path, redis_server: Redis, start_service) -> tuple[SecretVolume, list]:
    volume = SecretVolume(tmp_path / "secret")
    volume.write(f"alpha:{ALPHA_KEY}\nbeta:{BETA_KEY}\n")
    services = [
        start_service(
            AGENT_SESSION_URL=redis_server.url,
            AGENT_API_KEYS_FILE=str(volume.path),
            AGENT_LOG_LEVEL="debug",
        )
        for _ in range(2)
    ]
    for service in services:
        service.wait_ready()
    return volume, services


def _log_records(service: Service) -> list[dict]:
    records = []
    for line in service.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def test_no_key_or_a_wrong_key_is_401_with_a_bearer_challenge_on_every_replica(
    replicas,
) -> None:
    _, services = replicas
    for service in services:
        for headers in ({}, _bearer(WRONG_KEY), {"Authorization": f"Basic {ALPHA_KEY}"}):
            for method, path in (
                ("POST", "/v1/chat"),
                ("POST", "/v1/chat/stream"),
                ("GET", "/v1/sessions/any"),
                ("DELETE", "/v1/sessions/any"),
            ):
                response = httpx.request(
                    method, service.url + path, json={"message": "hi"}, headers=headers, timeout=10
                )
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["WWW-Authenticate"] == CHALLENGE
                assert response.json()["error"] == "unauthorized"
        # Probes and metrics stay open: the kubelet and Prometheus carry no client key.
        assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
        metrics = httpx.get(service.url + "/metrics", timeout=10)
        assert "agent_auth_failures_total 12.0" in metrics.text.splitlines()


def test_a_session_is_unknown_to_every_client_but_its_own_on_any_replica(replicas) -> None:
    _, (first, second) = replicas
    created = httpx.post(
        first.url + "/v1/chat",
        json={"message": "mine"},
        headers=_bearer(ALPHA_KEY),
        timeout=10,
    )
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]

    for service in (first, second):
        intruder = _bearer(BETA_KEY)
        turn = httpx.post(
            service.url + "/v1/chat",
            json={"session_id": session_id, "message": "let me in"},
            headers=intruder,
            timeout=10,
        )
        assert turn.status_code == 404, turn.text
        assert turn.json()["error"] == "session-not-found"
        streamed = httpx.post(
            service.url + "/v1/chat/stream",
            json={"session_id": session_id, "message": "let me in"},
            headers=intruder,
            timeout=10,
        )
        assert streamed.status_code == 404, streamed.text
        history = httpx.get(f"{service.url}/v1/sessions/{session_id}", headers=intruder)
        assert history.status_code == 404
        assert history.json()["error"] == "session-not-found"
        deleted = httpx.delete(f"{service.url}/v1/sessions/{session_id}", headers=intruder)
        assert deleted.status_code == 404

    # The owner still has all of it, on the other replica: nothing the intruder did counted.
    history = httpx.get(f"{second.url}/v1/sessions/{session_id}", headers=_bearer(ALPHA_KEY))
    assert history.status_code == 200
    assert [m["content"] for m in history.json()["messages"]] == ["mine", "echo: mine"]
    deleted = httpx.delete(f"{second.url}/v1/sessions/{session_id}", headers=_bearer(ALPHA_KEY))
    assert deleted.status_code == 204

    # The client's name, never its key, is in the request log and the metrics.
    requests = [r for r in _log_records(first) if r.get("msg") == "request"]
    assert {"alpha", "beta"} <= {r.get("client") for r in requests}
    assert 'client="alpha"' in httpx.get(first.url + "/metrics").text


def test_a_rotated_key_works_and_the_old_one_fails_on_both_replicas_without_a_restart(
    replicas,
) -> None:
    volume, services = replicas
    pids = [s.proc.pid for s in services]
    for service in services:
        ok = httpx.post(
            service.url + "/v1/chat", json={"message": "before"}, headers=_bearer(ALPHA_KEY)
        )
        assert ok.status_code == 200, ok.text

    volume.write(f"alpha:{ALPHA_ROTATED}\nbeta:{BETA_KEY}\n")

    def accepts(service: Service, key: str) -> bool:
        answer = httpx.post(
            service.url + "/v1/chat", json={"message": "after"}, headers=_bearer(key), timeout=10
        )
        assert answer.status_code in (200, 401), answer.text
        return answer.status_code == 200

    for service in services:
        # The event waited on: this replica accepts the new key (it re-reads on a changed file).
        wait_until(lambda s=service: accepts(s, ALPHA_ROTATED), 10, "the rotated key", service)
        assert not accepts(service, ALPHA_KEY)
        assert accepts(service, BETA_KEY)  # the other client's key did not change
        assert any(r.get("msg") == "API keys reloaded" for r in _log_records(service))
    assert [s.proc.pid for s in services] == pids
    assert all(s.proc.poll() is None for s in services)


def test_a_broken_rotation_keeps_the_last_good_keys(replicas) -> None:
    volume, (service, _) = replicas
    volume.write(f"alpha {ALPHA_ROTATED}\n")  # no colon: refused, naming the line, not the key

    def refused_the_file() -> bool:
        # Each authenticated request makes the service look at the keys file again.
        answer = httpx.get(f"{service.url}/v1/sessions/probe", headers=_bearer(ALPHA_KEY))
        assert answer.status_code == 404, answer.text  # still let in with the old key
        return any("not reloaded" in str(r.get("msg")) for r in _log_records(service))

    wait_until(refused_the_file, 10, "the service to refuse the broken file", service)
    (refusal,) = [r for r in _log_records(service) if "not reloaded" in str(r.get("msg"))]
    assert refusal["level"] == "error"
    assert "line 1" in refusal["msg"]
    answer = httpx.post(service.url + "/v1/chat", json={"message": "x"}, headers=_bearer(ALPHA_KEY))
    assert answer.status_code == 200, answer.text


def test_open_access_warns_at_startup_when_not_bound_to_loopback(
    tmp_path: Path, start_service
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"alpha:{ALPHA_KEY}\n")
    # The port is held on 127.0.0.1, so binding 0.0.0.0 fails and no service ever listens on a
    # public address here; the warning comes from the lifespan, which runs before uvicorn binds.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        open_service = start_service(AGENT_HOST="0.0.0.0", AGENT_PORT=port)
        guarded = start_service(
            AGENT_HOST="0.0.0.0", AGENT_PORT=port, AGENT_API_KEYS_FILE=str(keys)
        )
        assert open_service.wait_exit() != 0
        assert guarded.wait_exit() != 0
    for service in (open_service, guarded):
        # Both got as far as binding: the lifespan (and any warning) had run.
        assert "address already in use" in service.output().lower(), service.output()
    warnings = [r for r in _log_records(open_service) if r.get("level") == "warning"]
    assert any("client authentication is off" in str(r.get("msg")) for r in warnings), (
        open_service.output()
    )
    assert "0.0.0.0" in open_service.output()
    assert "client authentication is off" not in guarded.output()


def test_a_loopback_service_without_keys_does_not_warn(start_service) -> None:
    service = start_service()
    service.wait_ready()
    assert "client authentication is off" not in service.output()
