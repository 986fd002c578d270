"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and a broken one is caught."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fusionsearch", "searchers", "trainables")


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), "--no-cache", "pyproject.toml"],
        cwd=folder, env=os.environ | {"PYTHONPATH": str(folder)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("fusionsearch/search/strategies.py", "import torch", "import no torch, MONAI or Ray"),
        ("fusionsearch/train/loop.py", "import ray", "import no Ray"),
        ("fusionsearch/model/network.py", "import fusionsearch.driver", "fusionsearch layers"),
        ("fusionsearch/report/pages.py", "import searchers", "only the top layer"),
    ],
)
def test_a_broken_contract_fails_the_check(tmp_path, module, line, contract):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [x for x in result.stdout.splitlines() if x.endswith("BROKEN")]
    assert broken and contract in " ".join(result.stdout.split()), result.stdout


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import searchers", ("torch", "monai")),
        (
            "import fusionsearch, fusionsearch.search.experiment, fusionsearch.settings",
            ("torch", "monai", "ray"),
        ),
    ],
)
def test_light_imports_stay_light(statement, absent):
    code = f"{statement}; import sys; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout
