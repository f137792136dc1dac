"""A non-editable install, used from outside the repo, still finds demo_models and assets."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip()[-200:]}")
    return next(out.glob("depview-*.whl"))


def test_wheel_contains_package_assets_and_demos(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "viewer/core/trace.py" in names
    assert "demo_models/resnet.py" in names
    assert any(n.startswith("viewer/assets/") and n.endswith(".css") for n in names)


def test_installed_wheel_runs_outside_the_repo(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    code = ("import viewer, demo_models, sys; from viewer.resources import assets_dir;"
            "print(viewer.__file__); print(assets_dir())")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    mod_file, assets = res.stdout.split()
    assert mod_file.startswith(str(site))
    assert Path(assets).is_dir() and any(Path(assets).glob("*.css"))
    res = subprocess.run([sys.executable, "-m", "viewer", "demos"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "demo:resnet" in res.stdout, res.stderr
