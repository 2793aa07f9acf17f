"""Run directories, record files and the registry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from lowbit.registry import Registry, UnknownNameError
from lowbit.runs import RecordWriter, atomic_write_text, create_run_dir, read_records, write_run_files


def test_record_writer_appends_and_widens(tmp_path):
    path = tmp_path / "records.csv"
    writer = RecordWriter(path)
    writer.write({"a": 1, "value": 0.1})
    writer.write_many([{"a": 2, "value": 1 / 3}, {"a": 3, "b": "x", "value": 2.5}])
    rows = read_records(path)
    assert [r["a"] for r in rows] == [1, 2, 3]
    assert rows[1]["value"] == 1 / 3  # full float precision survives the CSV
    assert rows[0]["b"] is None and rows[2]["b"] == "x"
    # A new writer on the same file continues it.
    RecordWriter(path).write({"a": 4, "b": "y", "value": 0.0})
    assert len(read_records(path)) == 4


def test_run_dir_files(tmp_path):
    @dataclass
    class C:
        name: str = "demo"

    run_dir = create_run_dir("demo", tmp_path)
    assert run_dir.name.startswith("demo-") and (run_dir / "plots").is_dir()
    assert create_run_dir("demo", tmp_path) != run_dir  # never reuses a folder
    write_run_files(run_dir, C())
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == {"name": "demo"}
    meta = yaml.safe_load((run_dir / "meta.yaml").read_text())
    assert {"lowbit", "torch", "machine", "lowbit_commit", "workdir_repo", "workdir_commit"} <= set(meta)


def test_atomic_write(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and list(tmp_path.iterdir()) == [path]


def test_registry_unknown_name_lists_nearest():
    reg = Registry("widget")
    reg.register("swish_sign")(lambda: 1)
    reg.register("ste")(lambda: 2)
    with pytest.raises(UnknownNameError) as info:
        reg.create("swish_sgn")
    assert "Did you mean 'swish_sign'?" in str(info.value) and "ste" in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        reg.register("ste")(lambda: 3)
