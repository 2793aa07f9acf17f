"""The Python examples in README.md and docs/*.md run as written.

README.md and docs/api.md are read one block at a time (a reader pastes one
example), so each of their blocks runs alone, in a fresh namespace. In the
other documents the blocks run in order in one namespace (a later block may use
an earlier one's names, as a reader of the page would). Every block runs in a
temporary working directory that sees the repository's ``configs/``. A block
whose first line is a comment starting with ``# excerpt`` shows library code
and is not run. docs/api.md's examples register models, quantizers and
estimators of their own, so they run in a subprocess: this process's
registries stay as lowbit ships them (other tests list every registered name).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if "```python" in p.read_text())]
STANDALONE = {"README.md", "docs/api.md"}  # every block runs alone
SUBPROCESS = {"docs/api.md"}  # its blocks register components

RUNNER = r'''
import re, sys
blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1], encoding="utf-8").read(), re.S)
namespace = {}
for number, block in enumerate(blocks, 1):
    if block.lstrip().startswith("# excerpt"):
        continue
    if sys.argv[3] == "alone":
        namespace = {"__name__": f"example_{number}"}
    exec(compile(block, f"{sys.argv[2]} example {number}", "exec"), namespace)
'''


def test_the_api_page_is_among_the_documents():
    assert "docs/api.md" in DOCS


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run(doc, tmp_path, monkeypatch):
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{doc} has no python example"
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    mode = "alone" if doc in STANDALONE else "together"
    if doc in SUBPROCESS:
        result = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT / doc), doc, mode], cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        if block.lstrip().startswith("# excerpt"):
            continue
        if mode == "alone":
            namespace = {}
        exec(compile(block, f"{doc} example {number}", "exec"), namespace)
