"""The documentation pages build into a site with no broken link, and the README stays short."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_build_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "site" / "rl" / "index.html").exists()


def test_the_readme_is_read_in_five_minutes_and_links_only_pages_that_exist():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for link in {part.split(")")[0] for part in readme.split("](docs/")[1:]}:
        assert (REPO / "docs" / link).exists(), link
