"""The README's drop-in example runs as printed: our steps inside a plain datatrove pipeline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_readme_dropin_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    code = re.search(r"<!-- dropin -->\n```python\n(.*?)```\n<!-- /dropin -->", readme, re.S).group(1)
    prose = "The function returns the number of items in the container, or raises an error if it is closed."
    docs = [{"text": prose, "id": "kept", "media": [{"id": "0", "type": 0, "url": "https://ok.example/a.jpg",
                                                     "media_bytes": None}]},
            {"text": prose, "id": "opted", "metadata": {"url": "https://www.oldmaps.example/page.html"}},
            {"text": "qz xk zq vv jj kx qq zz jq xv", "id": "gibberish"}]
    (tmp_path / "my_docs").mkdir()
    (tmp_path / "my_docs" / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]

    def ids(folder: str) -> list[str]:
        files = sorted((tmp_path / folder).glob("*.jsonl.gz"))
        import gzip

        return [json.loads(line)["id"] for f in files for line in gzip.open(f, "rt")]

    assert ids("kept") == ["kept"]
    assert ids("removed/optout") == ["opted"]
    assert ids("removed/perplexity") == ["gibberish"]
