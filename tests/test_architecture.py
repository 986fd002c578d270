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
    assert "6 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("fusionsearch/search/strategies.py", "import torch", "import no torch, MONAI or Ray"),
        ("fusionsearch/train/loop.py", "import ray", "import no Ray"),
        ("fusionsearch/model/network.py", "import fusionsearch.tune.driver", "fusionsearch layers"),
        ("fusionsearch/report/pages.py", "import searchers", "only the top layers"),
        ("fusionsearch/tune/compat.py", "import fusionsearch.tune.progress", "the Ray package"),
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
        # a trial's process without augmentation: MONAI's import alone took 3 of its 7 s of imports
        ("import trainables, trainables.candidate, trainables.data_parallel", ("monai",)),
    ],
)
def test_light_imports_stay_light(statement, absent):
    code = f"{statement}; import sys; print(sorted(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def _ray_private_imports(path: Path) -> list[str]:
    """``module.name`` of every import from Ray in ``path`` whose module or name is private (a part
    starting with ``_``, as ``ray.train._internal`` or ``_ObjectCache``) or semi-internal
    (``ray.tune.execution``, ``ray.tune.utils``, ``ray.tune.experiment``)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "ray"]
        else:
            continue
        semi = ("ray.tune.execution", "ray.tune.utils", "ray.tune.experiment")
        found += [n for n in names if any(p.startswith("_") for p in n.split(".")) or n.startswith(semi)]
    return found


def test_private_ray_names_are_imported_by_the_compatibility_module_only():
    users = {
        str(path.relative_to(ROOT)): names
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (names := _ray_private_imports(path))
    }
    # Not even compat imports them with an import statement: it looks them up by name at run time
    # (importlib), so that a moved one is an error message, not an ImportError.
    assert users == {}, users
    source = (ROOT / "fusionsearch/tune/compat.py").read_text()
    assert all(f'("{module}", "{name}")' in source for module, name in _compat_names())


def _compat_names():
    from fusionsearch.tune.compat import NAMES

    return NAMES


@pytest.mark.parametrize(
    ("prelude", "expected"),
    [
        (
            "import ray; ray.__version__ = '2.70.0'",
            "Ray 2.70.0 is installed, but fusionsearch supports Ray >=2.52,<2.61",
        ),
        (
            "import ray.tune.utils.object_cache as m; del m._ObjectCache",
            "lacks ray.tune.utils.object_cache._ObjectCache, which fusionsearch uses",
        ),
    ],
)
def test_an_unsupported_ray_is_one_paragraph_from_the_cli_not_an_import_traceback(
    tmp_path, prelude, expected
):
    """The CLI imports the Ray package when a command needs it; a moved private name is exit 2."""
    code = f"{prelude}\nimport sys\nfrom fusionsearch.cli import main\nsys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "resume", "nothing", "--storage", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and expected in " ".join(result.stderr.split())
    assert "pip install 'ray[default,tune]>=2.52,<2.61'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one paragraph
