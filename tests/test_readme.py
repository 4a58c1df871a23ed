"""The README's CLI examples compose (all of them) and the cheap ones run."""

from __future__ import annotations

import re
import shlex

import pytest

from histograph.train import run
from tests.conftest import ROOT, needs_mirror


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## CLI examples", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("python train.py"):
            commands.append(shlex.split(line)[2:])
    return commands


def first_of_sweep(args: list[str]) -> list[str]:
    """``-m a=1,2 b=x,y`` -> ``a=1 b=x`` (one point of the sweep)."""
    return [re.sub(r"=([^,]*),.*", r"=\1", a) for a in args if a != "-m"]


def test_readme_has_examples():
    assert len(readme_commands()) >= 6


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_example_composes(args, cfg_factory, tmp_path):
    overrides = [a.replace("<run>", "x") for a in first_of_sweep(args)]
    cfg = cfg_factory(overrides)
    assert cfg.model.layers >= 1 and cfg.protocol.name in ("holdout", "gin", "ogb")


@needs_mirror("ogb/ogbg_molbbbp")
def test_readme_ogb_example_runs(cfg_factory):
    args = next(a for a in readme_commands() if "dataset=ogbg_molbbbp" in a)
    res = run(cfg_factory(args + ["model.hidden=16", "model.layers=2"]))
    assert res["dataset"] == "ogbg-molbbbp" and res["metric"] == "rocauc"
    assert res["protocol"] == "ogb" and 0.0 <= res["test"] <= 1.0
