"""Client API keys: parsing, lookup, reload on change (also a Secret's symlink swap)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent_service.auth import ApiKeys, KeysFileError, is_loopback, parse_keys, warn_if_open

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef00"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_bearer_key_identifies_its_client(tmp_path: Path) -> None:
    keys = ApiKeys(_write(tmp_path / "keys", f"# clients\nalice:{ALICE}\n\nbob: {BOB}\n"))
    assert keys.identify(f"Bearer {ALICE}") == "alice"
    assert keys.identify(f"bearer {BOB}") == "bob"
    assert keys.clients == {"alice", "bob"}


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {ALICE}", f"Bearer {ALICE}x", ALICE]
)
def test_a_missing_or_wrong_key_identifies_nobody(tmp_path: Path, header: str | None) -> None:
    keys = ApiKeys(_write(tmp_path / "keys", f"alice:{ALICE}\n"))
    assert keys.identify(header) is None


def test_a_client_may_hold_two_keys_while_rotating(tmp_path: Path) -> None:
    keys = ApiKeys(_write(tmp_path / "keys", f"alice:{ALICE}\nalice:{BOB}\n"))
    assert keys.identify(f"Bearer {ALICE}") == keys.identify(f"Bearer {BOB}") == "alice"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no `client-name:key` line"),
        ("alice\n", "line 1"),
        (f"bad name:{ALICE}\n", "line 1"),
        ("alice:short\n", "at least 16"),
        (f"alice:{ALICE}\nbob:{ALICE}\n", "line 2 (client bob): this key is listed twice"),
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_line_not_the_key(text: str, problem: str) -> None:
    with pytest.raises(KeysFileError) as err:
        parse_keys(text)
    assert problem in str(err.value)
    assert ALICE not in str(err.value)


def test_an_edited_file_is_reloaded_without_a_restart(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys", f"alice:{ALICE}\n")
    keys = ApiKeys(path)
    assert keys.identify(f"Bearer {ALICE}") == "alice"
    _write(path, f"alice:{BOB}\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert keys.identify(f"Bearer {ALICE}") is None
    assert keys.identify(f"Bearer {BOB}") == "alice"
    assert keys.reloads == 1


def test_a_secret_volume_update_by_symlink_swap_is_reloaded(tmp_path: Path) -> None:
    # The kubelet's layout: keys -> ..data/keys, ..data -> ..<timestamp>/, swapped atomically.
    mount = tmp_path / "secret"
    mount.mkdir()
    first, second = mount / "..2026_01", mount / "..2026_02"
    first.mkdir()
    second.mkdir()
    _write(first / "keys", f"alice:{ALICE}\n")
    _write(second / "keys", f"bob:{BOB}\n")
    (mount / "..data").symlink_to(first.name)
    (mount / "keys").symlink_to("..data/keys")
    keys = ApiKeys(mount / "keys")
    assert keys.identify(f"Bearer {ALICE}") == "alice"
    (mount / "..data_tmp").symlink_to(second.name)
    (mount / "..data_tmp").replace(mount / "..data")
    assert keys.identify(f"Bearer {ALICE}") is None
    assert keys.identify(f"Bearer {BOB}") == "bob"


def test_a_broken_update_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path / "keys", f"alice:{ALICE}\n")
    keys = ApiKeys(path)
    _write(path, f"alice {BOB}\n")
    with caplog.at_level(logging.ERROR, logger="agent_service.auth"):
        assert keys.identify(f"Bearer {ALICE}") == "alice"
    assert "keeping the previous keys" in caplog.text
    assert BOB not in caplog.text
    path.unlink()
    assert keys.identify(f"Bearer {ALICE}") == "alice"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback_addresses_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_open_access_on_a_public_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent_service.auth"):
        warn_if_open(None, "127.0.0.1")
        assert not caplog.records
        warn_if_open(Path("/keys"), "0.0.0.0")
        assert not caplog.records
        warn_if_open(None, "0.0.0.0")
    assert "client authentication is off" in caplog.text
