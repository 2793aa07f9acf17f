"""The Python examples in README.md and docs/*.md run as written.

Each document's blocks run in order in one namespace (a later block may use an
earlier one's names, as a reader would), in a temporary working directory that
sees the repository's ``configs/``. A block whose first line is a comment
starting with ``# excerpt`` shows library code and is not run.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if "```python" in p.read_text())]


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run(doc, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)
    assert blocks, f"{doc} has no python example"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace: dict = {}
    for block in blocks:
        if block.lstrip().startswith("# excerpt"):
            continue
        exec(compile(block, f"{doc} example", "exec"), namespace)
