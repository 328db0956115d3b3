"""Config validation names the bad key; files are written atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from lungnet.config import from_dict, load_yaml, to_dict
from lungnet.errors import ConfigError
from lungnet.fileio import atomic_directory, write_json


@dataclass
class Inner:
    size: int = 128
    window: tuple[float, float] | None = None


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    rate: float = 0.1
    switch: bool | Literal["auto"] = "auto"
    inner: Inner = field(default_factory=Inner)


def test_from_dict_fills_nested_dataclasses():
    cfg = from_dict(Outer, {"mode": "b", "rate": 1, "inner": {"size": 64, "window": [-1000, 400]}})
    assert (
        cfg.mode == "b" and cfg.rate == 1.0 and cfg.inner.size == 64 and cfg.inner.window == (-1000.0, 400.0)
    )
    assert to_dict(cfg)["inner"]["window"] == [-1000.0, 400.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nmae": "y"}, r"exp.yaml: unknown key\(s\) \['nmae'\]"),
        ({"inner": {"sise": 3}}, r"exp.yaml.inner: unknown key\(s\) \['sise'\]"),
        ({"mode": "c"}, r"exp.yaml.mode: 'c' is not one of \['a', 'b'\]"),
        ({"rate": "fast"}, r"exp.yaml.rate: expected a number, got 'fast'"),
        ({"inner": {"size": 1.5}}, r"exp.yaml.inner.size: expected an integer"),
        ({"inner": {"window": [1, 2, 3]}}, r"exp.yaml.inner.window"),
        ({"switch": "yes"}, r"exp.yaml.switch: 'yes' is not true or false, or one of \['auto'\]$"),
    ],
)
def test_bad_keys_and_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "exp.yaml")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_atomic_directory_removes_partial_work(tmp_path):
    target = tmp_path / "entry"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.npy").write_bytes(b"123")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        write_json(tmp / "ok.json", {"a": 1})
    assert (target / "ok.json").read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_unfinished_atomic_writes_are_removed_and_nothing_else(tmp_path):
    from lungnet.fileio import remove_unfinished_writes

    (tmp_path / "p-last.weights.h5").write_bytes(b"complete")
    (tmp_path / ".p-last.weights.h5.k3j2.weights.h5").write_bytes(b"trunc")  # what a SIGKILL leaves
    (tmp_path / ".gitkeep").write_text("")
    removed = remove_unfinished_writes(tmp_path, ".weights.h5")
    assert [p.name for p in removed] == [".p-last.weights.h5.k3j2.weights.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitkeep", "p-last.weights.h5"]
