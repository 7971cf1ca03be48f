"""The autoscaling config: Ray's names, JSON always, YAML when PyYAML is there, and a
clear error naming the key for every kind of bad input."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
from aioray.daemons.autoscaler.config import ConfigError, load, parse

GOOD: dict[str, Any] = {
    "cluster_name": "demo",
    "max_workers": 4,
    "upscaling_speed": 2,
    "idle_timeout_minutes": 0.05,
    "provider": {"type": "local"},
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
        "cpu2": {"resources": {"CPU": 2, "custom": 1.5}, "min_workers": 1, "max_workers": 3},
    },
}


def test_json_file_is_read_with_rays_names(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(GOOD))
    c = load(str(path))
    assert c.max_workers == 4 and c.upscaling_speed == 2.0 and c.cluster_name == "demo"
    assert c.idle_timeout_s == pytest.approx(3.0)  # a float of minutes: seconds in tests
    assert set(c.worker_types) == {"cpu2"}  # the head's type is never launched
    t = c.node_types["cpu2"]
    assert (t.resources, t.min_workers, t.max_workers) == ({"CPU": 2.0, "custom": 1.5}, 1, 3)


def test_yaml_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "provider: {type: kubernetes, namespace: ns}\n"
        "available_node_types:\n  w: {resources: {CPU: 4}, max_workers: 2}\n"
    )
    c = load(str(path))
    assert c.provider == {"type": "kubernetes", "namespace": "ns"}
    assert c.node_types["w"].max_workers == 2


def test_yaml_without_pyyaml_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yml"
    path.write_text("provider: {type: local}\n")
    real_import = builtins.__import__

    def no_yaml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "yaml":
            raise ImportError("No module named 'yaml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    with pytest.raises(ConfigError, match=r"needs PyYAML.*or write the config as JSON"):
        load(str(path))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(str(bad))


def _with(**changes: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(GOOD))
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with(max_wrkers=3), r"^max_wrkers: unknown key"),
        ({k: v for k, v in GOOD.items() if k != "provider"}, r"^provider: missing"),
        (_with(provider={"type": "aws"}), r"^provider\.type: must be one of local, kubernetes"),
        (
            _with(available_node_types={"w": {"resources": {"CPU": 1}, "cpus": 1}}),
            r"^available_node_types\.w\.cpus: unknown key",
        ),
        (
            _with(available_node_types={"w": {"min_workers": 3, "max_workers": 1}}),
            r"^available_node_types\.w\.max_workers: 1 is less than min_workers \(3\)",
        ),
        (
            _with(available_node_types={"w": {"resources": {"CPU": "two"}}}),
            r"^available_node_types\.w\.resources\.CPU: 'two' is not a non-negative number",
        ),
        (
            _with(available_node_types={"w": {"resources": {"GPU": True}}}),
            r"^available_node_types\.w\.resources\.GPU",
        ),
        (_with(available_node_types={}), r"^available_node_types: missing or empty"),
        (_with(max_workers=-1), r"^max_workers: -1 is not a non-negative integer"),
        (_with(upscaling_speed="fast"), r"^upscaling_speed: 'fast'"),
        (_with(head_node_type="nope"), r"^head_node_type: 'nope' is not in"),
        ([1, 2], r"must be a mapping"),
    ],
)
def test_bad_config_names_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(raw)


def test_cli_refuses_a_bad_config_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aioray import cli

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(_with(available_node_types={"w": {"min_workers": 2, "max_workers": 1}}))
    )
    for command in ("start", "serve-node"):
        with pytest.raises(SystemExit, match=r"aioray: available_node_types\.w\.max_workers"):
            cli.main([command, "--head", "--autoscaling-config", str(bad)])
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    with pytest.raises(SystemExit, match="runs the autoscaler on the head: add --head"):
        cli.main(["serve-node", "--address", "127.0.0.1:1", "--autoscaling-config", str(good)])
