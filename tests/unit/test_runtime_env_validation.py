"""Unit tests of runtime_env validation, scopes and merging (no cluster)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

import aioray as ray
from aioray._private.core import runtime_env
from aioray.runtime_env import RuntimeEnv, RuntimeEnvConfig


def test_runtime_env_is_a_validated_dict(tmp_path: Path) -> None:
    env = RuntimeEnv(env_vars={"A": "1"}, working_dir=str(tmp_path), pip=["requests"])
    assert isinstance(env, dict)
    assert env["working_dir"] == str(tmp_path)
    assert env.pip_config() == {"packages": ["requests"], "pip_install_options": []}
    assert env.env_vars() == {"A": "1"} and env.has_working_dir() and not env.has_uv()
    assert RuntimeEnv.deserialize(env.serialize()) == env


def test_config_defaults_and_checks() -> None:
    assert RuntimeEnvConfig() == {"setup_timeout_seconds": 600, "eager_install": True}
    env = runtime_env.normalize({"config": {"setup_timeout_seconds": 5}})
    assert env["config"] == {"setup_timeout_seconds": 5, "eager_install": True}
    with pytest.raises(ValueError, match="setup_timeout_seconds"):
        RuntimeEnvConfig(setup_timeout_seconds=0)
    with pytest.raises(TypeError, match="eager_install"):
        runtime_env.normalize({"config": {"eager_install": "yes"}})
    with pytest.raises(ValueError, match="'bogus'"):
        runtime_env.normalize({"config": {"bogus": 1}})


@pytest.mark.parametrize("field", ["conda", "container", "image_uri"])
def test_unsupported_fields_are_refused_by_name(field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}' is not supported"):
        runtime_env.normalize({field: "x"})


def test_unknown_field_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Unknown runtime_env field 'wokring_dir'"):
        RuntimeEnv(wokring_dir=".")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"pip": 1}, "pip"),
        ({"uv": 1.5}, "uv"),
        ({"pip": [1, 2]}, "pip"),
        ({"env_vars": {"A": 1}}, "env_vars"),
        ({"py_modules": "not-a-list"}, "py_modules"),
        ({"working_dir": 3}, "working_dir"),
        ({"excludes": "*.log"}, "excludes"),
    ],
)
def test_wrong_types_name_the_field(env: dict[str, object], field: str) -> None:
    with pytest.raises(TypeError, match=f"'{field}'"):
        runtime_env.normalize(env)


def test_pip_shapes(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nrequests==2.0\n\n--no-index\n")
    assert runtime_env.normalize({"pip": str(req)})["pip"]["packages"] == [
        "requests==2.0",
        "--no-index",
    ]
    pip = {"packages": ["a"], "pip_install_options": ["--no-index"], "pip_check": False}
    assert runtime_env.normalize({"pip": pip})["pip"] == {
        "packages": ["a"],
        "pip_install_options": ["--no-index"],
    }
    uv = runtime_env.normalize({"uv": {"packages": ["a"], "uv_pip_install_options": ["-q"]}})
    assert uv["uv"] == {"packages": ["a"], "uv_pip_install_options": ["-q"]}
    with pytest.raises(ValueError, match="cannot both"):
        runtime_env.normalize({"pip": ["a"], "uv": ["b"]})
    with pytest.raises(ValueError, match="requirements file"):
        runtime_env.normalize({"pip": str(tmp_path / "missing.txt")})
    with pytest.raises(ValueError, match="'colour'"):
        runtime_env.normalize({"pip": {"packages": ["a"], "colour": 1}})


def test_working_dir_must_exist_and_be_a_dir_or_zip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"working_dir.*does not exist"):
        runtime_env.normalize({"working_dir": str(tmp_path / "nope")})
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"neither a directory nor a \.zip"):
        runtime_env.normalize({"working_dir": str(text)})
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("m.py", "X = 1\n")
    assert runtime_env.normalize({"working_dir": str(good)})["working_dir"] == str(good)
    with pytest.raises(ValueError, match="only local paths and gcs://"):
        runtime_env.normalize({"working_dir": "s3://bucket/pkg.zip"})


def test_py_modules_accepts_packages_files_wheels_and_modules(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "single.py").write_text("")
    (tmp_path / "data.csv").write_text("")
    got = runtime_env.normalize({"py_modules": [tmp_path / "pkg", str(tmp_path / "single.py")]})
    assert got["py_modules"] == [str(tmp_path / "pkg"), str(tmp_path / "single.py")]
    assert runtime_env.normalize({"py_modules": [pytest]})["py_modules"] == [
        os.path.dirname(pytest.__file__)
    ]
    with pytest.raises(ValueError, match="not a package directory"):
        runtime_env.normalize({"py_modules": [str(tmp_path / "data.csv")]})


def test_task_level_refuses_local_packages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only supported at job level"):
        runtime_env.check_task_level({"working_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="only supported at job level"):
        runtime_env.check_task_level({"py_modules": [str(tmp_path)]})
    uri = "gcs://_aioray_pkg_0123.zip"
    env = {"working_dir": uri, "env_vars": {"A": "1"}, "pip": ["x"]}
    assert runtime_env.check_task_level(env)["working_dir"] == uri


def test_options_validate_runtime_env_at_submission(tmp_path: Path) -> None:
    @ray.remote
    def f() -> None:
        pass

    with pytest.raises(ValueError, match="only supported at job level"):
        f.options(runtime_env={"working_dir": str(tmp_path)})
    with pytest.raises(TypeError, match="'pip'"):
        f.options(runtime_env={"pip": 1})
    with pytest.raises(ValueError, match="'conda' is not supported"):
        ray.remote(runtime_env={"conda": "env"})(f._function)
    with pytest.raises(ValueError, match="'container' is not supported"):
        ray.init(runtime_env={"container": {"image": "x"}})
    assert not ray.is_initialized()


def test_merge_env_vars_key_by_key_other_fields_replace() -> None:
    parent = {"env_vars": {"A": "job", "B": "job"}, "pip": {"packages": ["x"]}, "working_dir": "u"}
    child = {"env_vars": {"B": "task"}, "pip": {"packages": ["y"]}}
    assert runtime_env.merge(parent, child) == {
        "env_vars": {"A": "job", "B": "task"},
        "pip": {"packages": ["y"]},
        "working_dir": "u",
    }
    assert runtime_env.merge(parent, None) == parent
    assert runtime_env.merge(None, child) == child


def test_env_key_is_canonical() -> None:
    a = {"env_vars": {"A": "1", "B": "2"}, "working_dir": "u"}
    b = {"working_dir": "u", "env_vars": {"B": "2", "A": "1"}}
    assert runtime_env.env_key(a) == runtime_env.env_key(b) != runtime_env.env_key({})
    assert runtime_env.env_key(None) == ""
    assert runtime_env.needs_setup(a) and not runtime_env.needs_setup({"env_vars": {"A": "1"}})


def test_a_submitted_jobs_driver_runs_in_the_jobs_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime_env.JOB_CONFIG_ENV, raising=False)
    assert runtime_env.with_the_jobs_env(None) is None
    assert runtime_env.with_the_jobs_env({"env_vars": {"A": "1"}}) == {"env_vars": {"A": "1"}}
    job = {"runtime_env": {"working_dir": "gcs://w.zip", "env_vars": {"A": "job", "B": "job"}}}
    monkeypatch.setenv(runtime_env.JOB_CONFIG_ENV, json.dumps(job))
    assert runtime_env.with_the_jobs_env(None) == job["runtime_env"]
    # init(runtime_env=...) overrides field by field; env_vars merge key by key (Ray's rule)
    assert runtime_env.with_the_jobs_env({"env_vars": {"A": "own"}, "py_modules": ["m"]}) == {
        "working_dir": "gcs://w.zip",
        "env_vars": {"A": "own", "B": "job"},
        "py_modules": ["m"],
    }
    monkeypatch.setenv(runtime_env.JOB_CONFIG_ENV, "{not json")
    with pytest.raises(ValueError, match="RAY_JOB_CONFIG_JSON_ENV_VAR is not a job config"):
        runtime_env.with_the_jobs_env(None)
