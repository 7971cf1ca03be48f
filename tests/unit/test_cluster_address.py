"""Which cluster a caller with no address means (``node.address_from_env``,
``node.find_gcs_address``): AIORAY_ADDRESS, then RAY_ADDRESS, as Ray reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aioray._private.node import node
from aioray._private.wire import auth, config


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in node.ADDRESS_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_given_address_wins_and_none_or_auto_read_the_environment(
    no_env: pytest.MonkeyPatch,
) -> None:
    assert node.address_from_env(None) is None
    assert node.address_from_env("auto") == "auto"
    no_env.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert node.address_from_env(None) == "10.0.0.2:6379"
    assert node.address_from_env("auto") == "10.0.0.2:6379"  # Ray's init reads it for "auto"
    no_env.setenv("AIORAY_ADDRESS", "10.0.0.1:6379")
    assert node.address_from_env(None) == "10.0.0.1:6379"
    assert node.address_from_env("10.0.0.3:1") == "10.0.0.3:1"
    assert node.address_from_env("local") == "local"


def test_a_dashboard_url_names_its_gcs_when_its_head_is_here(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_env.setattr(config, "SESSION_ROOT", str(tmp_path))
    session = tmp_path / "session_x"
    session.mkdir()
    (session / node.DASHBOARD_URL_FILE).write_text("127.0.0.1:8270")
    (session / node.GCS_ADDRESS_FILE).write_text("127.0.0.1:6390")
    no_env.setenv("RAY_ADDRESS", "http://127.0.0.1:8270/")
    assert node.find_gcs_address(None) == "127.0.0.1:6390"
    assert node.find_gcs_address("127.0.0.1:7000") == "127.0.0.1:7000"
    with pytest.raises(ValueError, match="names a dashboard that is not on this machine"):
        node.find_gcs_address("http://10.1.1.1:8265")
    with pytest.raises(ValueError, match="Invalid address 'nonsense'"):
        node.find_gcs_address("nonsense")


def test_a_job_client_pointed_at_nothing_says_it_is_neither_dashboard_nor_gcs(
    no_env: pytest.MonkeyPatch,
) -> None:
    import socket

    from aioray.job_submission import JobSubmissionClient

    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ConnectionError) as info:
            JobSubmissionClient(address)
    text = str(info.value)
    assert text.startswith(f"Failed to connect to the dashboard at http://{address}: ")
    assert f"nor is a cluster's GCS listening at {address}: " in text


def test_a_stopped_head_no_longer_names_the_token_of_its_address(
    no_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A head this process started and stopped: the OS may give its GCS port to another
    cluster next (a CI run saw it), whose token the cluster file holds; the stopped
    head's token is forgotten, or it would be sent there and refused."""
    no_env.setattr(config, "SESSION_ROOT", str(tmp_path))
    no_env.setattr(node, "CLUSTER_FILE", str(tmp_path / "aioray_current_cluster"))
    no_env.delenv(auth.TOKEN_ENV, raising=False)
    stopped = node.LocalNode()
    stopped.gcs_address, stopped.token = "127.0.0.1:4242", "the stopped head's"
    stopped.session_dir, stopped.session_id = str(tmp_path), "no-such-session"
    no_env.setitem(node._started_tokens, stopped.gcs_address, stopped.token)
    assert node.token_for("127.0.0.1:4242") == "the stopped head's"
    stopped.stop()
    node.write_cluster_file({"gcs_address": "127.0.0.1:4242", "token": "the new head's"})
    assert node.token_for("127.0.0.1:4242") == "the new head's"
