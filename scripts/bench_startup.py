"""Start-up: time to the first training step of ``python train.py``, and import times.

* **First step**: ``train.py`` is started as a fresh process (as a user would) through a small
  wrapper that timestamps the stages and exits at the first training batch: interpreter start
  and ``import histograph.train`` (Hydra, torch), Hydra compose + the rest of the imports until
  ``run`` builds the data module (Lightning, PyG), data loading + model building, trainer
  construction until the first ``on_train_batch_start``. Medians over repeats of the child's
  CPU seconds per stage (robust on a shared machine) and of the wall-clock total.
* **Imports**: each module imported alone in a fresh interpreter (CPU s, cumulative, with its
  dependencies), and the 12 slowest packages (``python -X importtime`` self times summed per
  package) for everything that is imported before the first step.

    python scripts/bench_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
import time

import _bench  # noqa: F401  (sets sys.path and the offline environment first)
from _bench import header, median, table

ROOT = _bench.ROOT
WRAPPER = r"""
import json, os, sys, time
wall = {"start": float(sys.argv[1])}
cpu = {"start": 0.0}

def stamp(name):
    wall[name], cpu[name] = time.time(), time.process_time()

stamp("interpreter")
import histograph.cli as cli
import histograph.train as ht
from histograph.tasks.graph import GraphTask
stamp("import histograph.train")
orig_dm, orig_trainer = GraphTask.datamodule, ht.build_trainer

def build_datamodule(self, cfg):
    stamp("compose + imports in run()")
    return orig_dm(self, cfg)

def build_trainer(cfg, callbacks, loggers, output_dir):
    import lightning.pytorch as pl

    stamp("data + model")

    class First(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            stamp("trainer + first batch")
            print("BENCH " + json.dumps({"wall": wall, "cpu": cpu}), flush=True)
            os._exit(0)

    return orig_trainer(cfg, [*callbacks, First()], loggers, output_dir)

GraphTask.datamodule, ht.build_trainer = build_datamodule, build_trainer
sys.argv = ["train.py", *sys.argv[2:]]
cli.main()
"""


def first_step(overrides: list[str], env: dict) -> dict[str, float]:
    """CPU seconds of each start-up stage of one ``train.py`` process (the process's own CPU
    time, which other jobs on a shared machine barely change), plus the wall-clock total."""
    with tempfile.TemporaryDirectory(prefix="bench_start_") as run_dir:
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, repr(start), *overrides, f"hydra.run.dir={run_dir}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"error: train.py did not reach a training step:\n{proc.stderr[-2000:]}")
    stamps = json.loads(line[6:])
    cpu, wall = stamps["cpu"], stamps["wall"]
    names, out = list(cpu), {}
    for prev, cur in zip(names, names[1:]):
        out[cur] = cpu[cur] - cpu[prev]
    out["total CPU"] = cpu[names[-1]]
    out["total wall"] = wall[names[-1]] - wall["start"]
    return out


def import_time(module: str, env: dict) -> float:
    code = (f"import time; t = time.process_time(); import {module}; "
            f"print(time.process_time() - t)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return float(proc.stdout.strip().splitlines()[-1])


def slowest_imports(env: dict, top: int = 12) -> list[dict]:
    """Top-level packages by cumulative ``-X importtime`` for what ``run`` imports."""
    code = ("import histograph.train, lightning.pytorch, torch_geometric.loader, "
            "histograph.training.module, histograph.data.datamodule, histograph.nn.model")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    totals: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:  # self time of every module, summed per top-level package
            pkg = m.group(4).split(".")[0]
            totals[pkg] = totals.get(pkg, 0) + int(m.group(1))
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": k, "self s": v / 1e6} for k, v in ranked]


def config_error_time(env: dict, root: Path = ROOT) -> float:
    """Wall seconds from ``python train.py model.layers=0`` to its one-line error."""
    start = time.time()
    proc = subprocess.run([sys.executable, str(root / "train.py"), "model.layers=0"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "model.layers" in proc.stderr, proc.stderr[-500:]
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["mutag", "proteins"])
    parser.add_argument("--config-error-only", action="store_true",
                        help="only the time to a config error (wall s, median)")
    args = parser.parse_args()
    if args.config_error_only:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        times = [config_error_time(env) for _ in range(args.repeats)]
        print(f"time to a config error (python train.py model.layers=0): median "
              f"{median(times):.2f} s over {len(times)} runs ({', '.join(f'{t:.2f}' for t in times)})")
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(ROOT)}
    print(header("Start-up", int(env["OMP_NUM_THREADS"]),
                 "fresh processes; stage times in CPU s of the process, medians; "
                 "PYTHONDONTWRITEBYTECODE="
                 f"{os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')}"), flush=True)
    print("\n### Time to the first training step of python train.py", flush=True)
    rows = []
    for name in args.datasets:
        overrides = [f"dataset={name}", "trainer.max_epochs=1", "logger=csv",
                     "trainer.enable_progress_bar=false"]
        runs = [first_step(overrides, env) for _ in range(args.repeats)]
        row = {"command": f"python train.py dataset={name}"}
        for key in runs[0]:
            row[key] = median(r[key] for r in runs)
        rows.append(row)
        print(f"  {row}", flush=True)
    print(table(rows, list(rows[0])))
    print("\n### Import time, each alone in a fresh interpreter (CPU s, with dependencies)",
          flush=True)
    modules = ["torch", "torch_geometric", "lightning.pytorch", "hydra", "histograph",
               "histograph.train"]
    rows = [{"module": m, "s": median(import_time(m, env) for _ in range(args.repeats))}
            for m in modules]
    print(table(rows, ["module", "s"]))
    print("\n### Slowest packages before the first step (python -X importtime: self time of "
          "their modules, summed per package)")
    print(table(slowest_imports(env), ["package", "self s"]))


if __name__ == "__main__":
    main()
