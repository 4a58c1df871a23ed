"""A non-editable install runs: the wheel ships the configs and every package."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib

from tests.conftest import NETGUARD_DIR, ROOT, guarded_env


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("histograph", "hydra_plugins") for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert "histograph.configs" in listed


def test_wheel_install_trains_from_another_folder(tmp_path):
    """``pip install .`` (a wheel, not editable) into a fresh venv, then ``histograph-train``
    from an unrelated folder: the configs come from the package, logs and data from the cwd."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies come from the test's own environment (offline); the package itself from
    # the wheel only: a plain path entry, so its editable-install finder is not loaded
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("histograph-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   timeout=300, capture_output=True)
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = guarded_env(tmp_path / "net.log", HISTOGRAPH_DATA_MIRROR="")
    env["PYTHONPATH"] = str(NETGUARD_DIR)  # the network guard, not the checkout
    env.pop("HISTOGRAPH_ROOT", None)
    located = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import histograph.resolvers as r; print(r.config_dir())"],
                             cwd=where, env=env, capture_output=True, text=True, check=True)
    assert located.stdout.strip().startswith(str(site)), located.stdout
    proc = subprocess.run([str(venv / "bin" / "histograph-train"), "trainer.max_epochs=1",
                           "trainer.enable_progress_bar=false", "model.layers=1",
                           "model.hidden=8", "readout=mean"],
                          cwd=where, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[histograph] MUTAG-gin1-mean-s0-f0" in proc.stdout
    assert list((where / "logs" / "train" / "runs").glob("*/results.json"))
    assert (where / "data" / "TUDataset" / "MUTAG").is_dir()  # the embedded copy, staged
