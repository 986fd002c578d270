"""The documentation site builds strictly, its links resolve, and its Python examples run."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_the_site_builds_strictly_with_the_cli_reference_generated_from_the_parser(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "--repeats" in cli and "fusionsearch data import-bids" in cli  # from the parser, not a copy
    assert "SearchConfig" in (tmp_path / "site" / "api" / "index.html").read_text()


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text))


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+\.(?:md|png))(#[^)]*)?\)", page.read_text()):
            path, anchor = (page.parent / target[0]), target[1][1:]
            if not path.is_file():
                broken.append(f"{page.name}: {target[0]}")
            elif anchor and path.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
                if anchor not in headings:
                    broken.append(f"{page.name}: {target[0]}#{anchor}")
    assert broken == []
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if "```python" in p.read_text()))
def test_the_python_examples_of_a_page_run_in_order(page, tmp_path):
    """Every ``python`` block of a page, in order, as one script in a fresh interpreter and folder."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    script = tmp_path / "example.py"
    script.write_text("\n\n".join(blocks))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
