"""What `pip install` puts into site-packages: only the `onnxprune` package, with the passes
inside it, and no top-level `passes` or `models` that would shadow (or be shadowed by) a
user's own folders of those common names."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import onnxprune

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {p.stderr.strip().splitlines()[-1:]}")
    return zipfile.ZipFile(next(out.glob("onnxprune-*.whl")))


def test_wheel_installs_only_the_onnxprune_package(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"onnxprune"}
    names = set(wheel.namelist())
    assert "onnxprune/passes/slice_initializers.py" in names
    assert "onnxprune/ops/spec.py" in names
    assert not any(n.startswith(("models/", "passes/", "tests/", "benchmarks/")) for n in names)


def test_wheel_version_is_the_package_version(wheel):
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    version = re.search(r"^Version: (.+)$", wheel.read(metadata).decode(), re.M).group(1)
    assert version == onnxprune.__version__


def test_dependencies_are_what_the_library_imports(wheel):
    """No declared dependency goes unused, and the test extra pins no exact torch version."""
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = re.findall(r"^Requires-Dist: (.+)$", wheel.read(metadata).decode(), re.M)
    base = sorted(re.split(r"[<>=!; \[]", r)[0] for r in requires if "extra ==" not in r)
    assert base == ["numpy", "onnx", "onnxruntime", "scipy"]
    torch = [r for r in requires if r.startswith("torch") and "extra == \"test\"" in r]
    assert torch and "==" not in torch[0].split(";")[0], torch
    assert any(r.startswith("torch") and "extra == \"fit\"" in r for r in requires), requires
    sources = "\n".join(p.read_text() for p in list((ROOT / "onnxprune").rglob("*.py")) + list((ROOT / "passes").glob("*.py")))
    for dep in base:
        assert re.search(rf"^\s*(import|from) {dep}\b", sources, re.M), dep
    # and the converse: every third-party import is declared, or optional with a one-line
    # refusal or note when missing (Pillow for image folders, matplotlib for --plot, torch
    # for the end-to-end fit)
    imported = {m for m in re.findall(r"^\s*(?:import|from) ([A-Za-z_]\w*)\b[\w.]* *(?:import|$|as)", sources, re.M)
                if m not in sys.stdlib_module_names and m != "onnxprune"}
    assert imported - {"PIL", "matplotlib", "torch"} == set(base), imported


def test_a_users_own_passes_and_models_folders_do_not_shadow_onnxprune(tmp_path):
    """A user's project with folders named passes/ and models/ on the path."""
    for name in ("passes", "models"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user\\'s own package')\n")
    code = ("import onnxprune, onnx; from onnxprune.passes import slice_initializers; "
            "print(onnxprune.prune(onnx.load(%r), ratio=0.3)[1].after['params'] > 0)"
            % str(ROOT / "models" / "digits_resnet.onnx"))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"
