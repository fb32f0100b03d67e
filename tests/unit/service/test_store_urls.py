"""Session URLs for one Redis, Sentinel and Cluster; key layout; TLS and WAIT settings."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from agent_service.config import ConfigError, load_settings
from agent_service.store import _reason, parse_session_url, session_key, session_keys


def test_a_sentinel_url_names_its_sentinels_master_and_db() -> None:
    topology = parse_session_url("rediss+sentinel://u:p%40ss@s1:26380,s2/sessions/3")
    assert (topology.kind, topology.tls) == ("sentinel", True)
    assert topology.hosts == [("s1", 26380), ("s2", 26379)]
    assert (topology.master, topology.db) == ("sessions", 3)
    assert (topology.username, topology.password) == ("u", "p@ss")


def test_a_cluster_url_lists_its_startup_nodes() -> None:
    topology = parse_session_url("redis+cluster://:pw@n1:7000,n2:7001")
    assert (topology.kind, topology.tls, topology.password) == ("cluster", False, "pw")
    assert topology.hosts == [("n1", 7000), ("n2", 7001)]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://s1:26379", "must name the Sentinel master"),
        ("redis+sentinel://s1:26379/m/x", "database that is not a number"),
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis://a:1,b:2/0", "use redis+sentinel:// or redis+cluster://"),
        ("redis+mesh://a:1", "unknown scheme"),
    ],
)
def test_a_malformed_session_url_is_rejected_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_session_url(url)


@pytest.mark.parametrize("session_id", ["a", "0123456789abcdef" * 8, "x-y_z"])
def test_every_key_of_a_session_is_in_one_cluster_slot(session_id: str) -> None:
    keys = [*session_keys(session_id), session_key(session_id, "budget")]
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys


def test_sessions_spread_over_the_cluster_slots() -> None:
    slots = {key_slot(session_key(f"s{i}").encode()) for i in range(1000)}
    assert len(slots) > 900


def test_wait_defaults_to_one_replica_with_sentinel_or_cluster_and_none_with_one_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_SESSION_URL", "redis://r:6379/0")
    assert load_settings().session_wait_replicas == 0
    for url in ("redis+sentinel://s:26379/m", "rediss+cluster://n:7000"):
        monkeypatch.setenv("AGENT_SESSION_URL", url)
        assert load_settings().session_wait_replicas == 1
    monkeypatch.setenv("AGENT_SESSION_MIN_REPLICAS", "0")
    assert load_settings().session_wait_replicas == 0


def test_tls_files_need_a_rediss_url_and_a_certificate_needs_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("AGENT_SESSION_URL", "redis+sentinel://s:26379/m")
    monkeypatch.setenv("AGENT_SESSION_CA_FILE", str(ca))
    monkeypatch.setenv("AGENT_SESSION_CERT_FILE", str(ca))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "AGENT_SESSION_CA_FILE: applies only to a rediss" in str(err.value)
    assert "AGENT_SESSION_CERT_FILE: set together with AGENT_SESSION_KEY_FILE" in str(err.value)
    monkeypatch.setenv("AGENT_SESSION_URL", "rediss+sentinel://s:26379/m")
    monkeypatch.setenv("AGENT_SESSION_KEY_FILE", str(ca))
    assert load_settings().session_ca_file == ca


def test_the_replica_wait_must_fit_in_the_store_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SESSION_URL", "redis+cluster://n:7000")
    monkeypatch.setenv("AGENT_SESSION_REPLICA_TIMEOUT_S", "1")
    with pytest.raises(ConfigError, match="AGENT_SESSION_REPLICA_TIMEOUT_S: must be below"):
        load_settings()
    monkeypatch.setenv("AGENT_SESSION_URL", "memory://")
    monkeypatch.setenv("AGENT_SESSION_MIN_REPLICAS", "1")
    with pytest.raises(ConfigError, match="memory:// has no replicas"):
        load_settings()


def _tls_failure(error: ssl.SSLError) -> RedisConnectionError:
    """A redis-py connection error caused by `error`, as a failed handshake raises it."""
    try:
        raise RedisConnectionError("connection failed") from error
    except RedisConnectionError as err:
        return err


def _ssl_error(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] alert")
    error.reason = reason  # set by the ssl module on a real failure
    return error


def test_a_tls_verification_failure_names_the_ca_setting() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    reason = _reason(_tls_failure(error))
    assert reason.startswith("TLS verification of the session store failed (unable to get")
    assert "check AGENT_SESSION_CA_FILE" in reason


@pytest.mark.parametrize(
    ("alert", "says"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "requires a client certificate: set"),
        ("TLSV1_ALERT_UNKNOWN_CA", "refused the client certificate (TLSV1_ALERT_UNKNOWN_CA)"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "refused the client certificate"),
    ],
)
def test_a_refused_client_certificate_names_the_certificate_settings(alert: str, says: str) -> None:
    reason = _reason(_tls_failure(_ssl_error(alert)))
    assert says in reason
    assert "AGENT_SESSION_CERT_FILE and AGENT_SESSION_KEY_FILE" in reason


def test_other_store_failures_are_named_by_their_type() -> None:
    assert _reason(RedisConnectionError("refused")) == "ConnectionError"
    reason = _reason(_tls_failure(_ssl_error("WRONG_VERSION_NUMBER")))
    assert reason == "TLS handshake with the session store failed (WRONG_VERSION_NUMBER)"
