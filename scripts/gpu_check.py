"""The GPU acceptance check: the real training path on real data, fp32 against bf16, with verdicts.

Every run goes through ``histograph.train.run`` on a config composed as ``python train.py``
composes it (the real loader, with its copies; the real LightningModule, callbacks and guards):

* **matrix**: GIN (GINE on ogbg-molhiv), GCN and GAT x readout mean and histograph x depth 5
  and 64 (64 with ``model.residual=pre``: see ``_matrix``) on PROTEINS, REDDIT-BINARY and
  ogbg-molhiv (from the data mirror), each trained once in fp32 and once with
  ``trainer.precision=bf16-mixed``: steps/s over the steps after the first epoch, peak GPU memory,
  host reads per training step (a ``TorchFunctionMode`` counting ``.item()``/``.tolist()``/
  ``bool()``/``.cpu()``/boolean masks; each is a sync on a GPU). **Agreement**: the fp32 run's
  selected checkpoint is evaluated on its test split with and without bf16 autocast; the test
  metric must agree within ``METRIC_TOL`` and HISTOGRAPH's layer weights within ``ALPHA_TOL``;
* **node task** end to end (Cora, GCN-64, HISTOGRAPH stage 1), **frozen mode** (a readout + head
  on the PROTEINS GIN-5 checkpoint's cached history), and a **2-process DDP** run when the
  machine has two GPUs.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` and exits 1 when any check failed
(0 when all passed; without CUDA and without ``--device cpu`` it says so and exits 0).
``--device cpu --quick`` runs a tiny version of the same checks (MUTAG, GIN-2, bf16 autocast on
the CPU; Cora GCN-2; frozen MUTAG) in the default test suite (``tests/test_gpu_check.py``).

    python scripts/gpu_check.py --workers 8 --limit-train-batches 50 --out results/gpu
        # make bench-gpu: 364 s on an H200 with 16 CPU cores (results/gpu/README.md)
    python scripts/gpu_check.py --only readout=histograph layers=5 --workers 9   # a subset
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OUTDATED_IGNORE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import histograph.train as train_mod  # noqa: E402
from histograph.nested import compose_job  # noqa: E402
from histograph.tasks import build_task  # noqa: E402
from histograph.utils import atomic_write_json, atomic_write_text  # noqa: E402

#: fp32 vs bf16 evaluation of the same weights: test metric (absolute) and layer weights.
METRIC_TOL, ALPHA_TOL = 0.02, 0.05
#: Host reads per training step allowed on a GPU: none with mean pooling, one for HISTOGRAPH's
#: node attention (graph sizes), plus the guard's read every 25 steps. On a CPU the guard reads
#: the loss and the gradient norm every step (free there): two more.
READS = {"mean": 0.1, "histograph": 1.1}
CPU_GUARD_READS = 2.0


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's value on the host."""

    NAMES = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu",
             "nonzero"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES or (name == "__getitem__" and len(args) > 1 and isinstance(
                args[1], torch.Tensor) and args[1].dtype == torch.bool):
            self.count += 1
        return func(*args, **(kwargs or {}))


class Measure(pl.Callback):
    """Steps/s after the first epoch, peak memory, and host reads per training step."""

    def __init__(self) -> None:
        self.steps, self.start, self.reads, self.counted = 0, None, 0, 0
        self.mode: HostReads | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            self._sync()
            self.start, self.steps = time.perf_counter(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1 and batch_idx < 20:
            self.mode = HostReads()
            self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.reads, self.counted, self.mode = self.reads + self.mode.count, \
                self.counted + 1, None
        self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.start if self.start else float("nan")

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def make_cfg(overrides: list[str], out: Path, data_dir: Path):
    GlobalHydra.instance().clear()  # a fresh compose per check (nested.compose_job reuses one)
    return compose_job([*overrides, f"paths.data_dir={data_dir}"], out)


def train(overrides: list[str], out: Path, data_dir: Path) -> tuple[dict, Measure]:
    """``histograph.train.run`` with the measuring callback added."""
    measure = Measure()
    real = train_mod.build_trainer
    train_mod.build_trainer = lambda cfg, cbs, lg, od: real(cfg, [*cbs, measure], lg, od)
    try:
        results = train_mod.run(make_cfg(overrides, out, data_dir))
    finally:
        train_mod.build_trainer = real
    return results, measure


@torch.no_grad()
def evaluate(overrides: list[str], checkpoint: str, out: Path, data_dir: Path, device: str,
             bf16: bool) -> tuple[float, list[float] | None, torch.Tensor]:
    """The test metric, mean layer weights and logits of ``checkpoint`` (fp32 or bf16)."""
    cfg = make_cfg(overrides, out, data_dir)
    task = build_task(cfg)
    dm = task.datamodule(cfg)
    lit = task.lightning_module(cfg, task.network(cfg, dm), dm)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    lit.load_state_dict(state)
    lit.to(device).eval()
    metric = lit.metrics["test_"]
    metric.reset()
    weights, outputs = [], []
    for batch in dm.test_dataloader():
        batch = batch.to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                            enabled=bf16):
            logits, alpha = lit.model(batch, return_layer_weights=True)
        metric.update(logits.float(), lit._target(batch.y))
        outputs.append(logits.float().cpu())
        if alpha is not None:
            weights.append(alpha.float().mean(0))
    alpha = torch.stack(weights).mean(0).tolist() if weights else None
    return float(metric.compute()), alpha, torch.cat(outputs)


def matrix(args) -> list[dict]:
    """The cells to run: the full or quick matrix, narrowed by ``--only KEY=VALUE``."""
    wanted = dict(item.split("=", 1) for item in getattr(args, "only", []) or [])
    return [c for c in _matrix(args)
            if all(str(c.get(k)) in v.split(",") for k, v in wanted.items())]


def _matrix(args) -> list[dict]:
    if args.quick:
        return [dict(dataset="mutag", model="gin", readout=r, layers=2, residual="false")
                for r in ("mean", "histograph")]
    # Shallow cells first, so that a run cut short by --budget-s still covers every dataset,
    # backbone and readout. ogbg-molhiv takes GINE (OGB's bond features) in place of GIN.
    # The 64-layer cells use the pre-activation residual: a plain 64-layer stack after 100 steps
    # is so ill-conditioned that bf16 rounding alone flips up to 20% of its predictions, with
    # mean pooling too (results/gpu/README.md), so the agreement check could not tell a precision
    # bug from it; the pre-activation stack agrees to 0.05 in the logits at the same speed and
    # memory. ``--override model.residual=false`` measures the plain stack.
    return [dict(dataset=d, model="gine" if (d, m) == ("ogbg_molhiv", "gin") else m,
                 readout=r, layers=L, residual="pre" if L > 8 else "false")
            for L in (5, 64) for d in ("proteins", "reddit_binary", "ogbg_molhiv")
            for m in ("gin", "gcn", "gat") for r in ("mean", "histograph")]


def check_run(case: dict, args, work: Path) -> dict:
    name = "-".join(str(v) for v in case.values())
    base = [f"dataset={case['dataset']}", f"model={case['model']}", f"readout={case['readout']}",
            f"model.layers={case['layers']}", f"trainer.max_epochs={args.epochs}",
            f"model.residual={case.get('residual', 'false')}",
            "trainer.enable_progress_bar=false", "logger=csv", "threads=1",
            f"trainer.accelerator={'cpu' if args.device == 'cpu' else 'gpu'}"]
    if args.limit_train_batches:
        base.append(f"+trainer.limit_train_batches={args.limit_train_batches}")
    base += getattr(args, "override", []) or []
    row = dict(case, check="train fp32 and bf16; evaluate fp32 weights in bf16")
    for item in getattr(args, "override", []) or []:  # an override wins over the cell's value
        if item.startswith("model.residual="):
            row["residual"] = item.split("=", 1)[1]
    start = time.time()
    for precision in ("32-true", "bf16-mixed"):
        if args.device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        res, m = train([*base, f"trainer.precision={precision}"], work / name / precision,
                       args.data_dir)
        tag = "fp32" if precision == "32-true" else "bf16"
        row[f"{tag}_steps_per_s"] = round(m.steps / m.seconds, 1) if m.seconds else None
        row[f"{tag}_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20) \
            if args.device != "cpu" else None
        row[f"{tag}_reads_per_step"] = round(m.reads / max(m.counted, 1), 2)
        row[f"{tag}_test"] = res["test"]
        # a one-class run is still measured (speed, memory, agreement), never silently
        row[f"{tag}_collapsed"] = bool(res.get("collapsed"))
        if tag == "fp32":
            checkpoint, row["metric"] = res["checkpoint"], res["metric"]
    device = "cpu" if args.device == "cpu" else "cuda"
    ev32, a32, l32 = evaluate(base, checkpoint, work / name / "eval", args.data_dir, device, False)
    ev16, a16, l16 = evaluate(base, checkpoint, work / name / "eval", args.data_dir, device, True)
    row["eval_fp32"], row["eval_bf16"] = round(ev32, 4), round(ev16, 4)
    # Context for a metric gap: a few near-tie graphs flip class under bf16 rounding of the
    # logits; a systematic error moves all of them.
    row["logit_max_diff"] = round(float((l32 - l16).abs().max()), 4)
    row["pred_agree"] = round(float((l32.argmax(-1) == l16.argmax(-1)).float().mean()), 4) \
        if l32.shape[-1] > 1 else round(float(((l32 > 0) == (l16 > 0)).float().mean()), 4)
    row["alpha_max_diff"] = None if a32 is None else round(
        max(abs(x - y) for x, y in zip(a32, a16)), 4)
    allowed = READS[case["readout"]] + (CPU_GUARD_READS if args.device == "cpu" else 0)
    problems = []
    if abs(ev32 - ev16) > METRIC_TOL:
        problems.append(f"bf16 evaluation differs by {abs(ev32 - ev16):.3f}")
    if row["alpha_max_diff"] is not None and row["alpha_max_diff"] > ALPHA_TOL:
        problems.append(f"layer weights differ by {row['alpha_max_diff']}")
    for tag in ("fp32", "bf16"):
        if row[f"{tag}_reads_per_step"] > allowed:
            problems.append(f"{row[f'{tag}_reads_per_step']} host reads per {tag} step "
                            f"(allowed {allowed})")
    row["ok"], row["problems"] = not problems, problems
    row["seconds"] = round(time.time() - start, 1)
    return row


def check_node(args, work: Path) -> dict:
    layers = 2 if args.quick else 64
    res, _ = train(["task=node", "dataset=cora", f"model.layers={layers}",
                    "readout=histograph_stage1", f"trainer.max_epochs={args.epochs}",
                    "trainer.enable_progress_bar=false", "logger=csv", "threads=1",
                    f"trainer.accelerator={'cpu' if args.device == 'cpu' else 'gpu'}"],
                   work / "node", args.data_dir)
    ok = res["dirichlet_energy"] is not None and len(res["layer_weights"] or []) == layers
    return dict(check=f"node task end to end (Cora, GCN-{layers}, histograph_stage1)", ok=ok,
                test=res["test"], problems=[] if ok else ["no diagnostics or layer weights"])


def check_frozen(args, work: Path) -> dict:
    dataset = "mutag" if args.quick else "proteins"
    common = [f"dataset={dataset}", "trainer.enable_progress_bar=false", "logger=csv",
              "threads=1", f"trainer.max_epochs={args.epochs}",
              f"trainer.accelerator={'cpu' if args.device == 'cpu' else 'gpu'}"]
    train([*common, "model.layers=5"], work / "frozen_src", args.data_dir)
    ckpt = work / "frozen_src" / "checkpoints" / "last.ckpt"
    res, m = train([*common, "mode=frozen", f"backbone_ckpt={ckpt}", "readout=histograph"],
                   work / "frozen", args.data_dir)
    ok = res["num_trainable_params"] < res["num_params"] and len(res["layer_weights"]) == 6
    return dict(check=f"frozen mode ({dataset}, GIN-5 backbone, histograph head)", ok=ok,
                test=res["test"], steps_per_s=round(m.steps / m.seconds, 1) if m.seconds
                else None, problems=[] if ok else ["the frozen run did not train its head"])


def check_ddp(args, work: Path) -> dict | None:
    if args.device == "cpu" or torch.cuda.device_count() < 2:
        return None
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "trainer=ddp",
                           "trainer.devices=2", "dataset=proteins", "trainer.max_epochs=2",
                           "trainer.enable_progress_bar=false", f"hydra.run.dir={work / 'ddp'}",
                           f"paths.data_dir={args.data_dir}"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    ok = proc.returncode == 0 and (work / "ddp" / "results.json").exists()
    world = json.loads((work / "ddp" / "results.json").read_text())["world_size"] if ok else None
    return dict(check="2-process DDP run", ok=ok and world == 2, world_size=world,
                problems=[] if ok else [proc.stderr.strip().splitlines()[-1:]])


def markdown(report: dict) -> str:
    rows = report["runs"]
    cols = ["dataset", "model", "readout", "layers", "residual", "fp32_steps_per_s",
            "bf16_steps_per_s",
            "fp32_peak_mb", "bf16_peak_mb", "fp32_reads_per_step", "eval_fp32", "eval_bf16",
            "pred_agree", "logit_max_diff", "alpha_max_diff", "fp32_collapsed",
            "bf16_collapsed", "seconds", "ok"]
    steps, workers = report.get("limit_train_batches"), report.get("workers", 1)
    setting = (f" of {steps} training steps" if steps else "") + (
        f"; {workers} runs at a time on the one device, so steps/s are lower bounds"
        if workers > 1 else "")
    lines = [f"# GPU check ({report['device']}, {report['gpu']}, torch {report['torch']})", "",
             f"`{report['command']}`; {report['epochs']} epoch(s) per run{setting}"
             f"; agreement: test "
             f"metric within {METRIC_TOL}, layer weights within {ALPHA_TOL}; all checks "
             f"{'PASSED' if report['ok'] else 'FAILED'} ({report['seconds']:.0f} s"
             f"{'' if report.get('complete', True) else '; INCOMPLETE, written mid-run'}).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += ["", "| other check | ok | details |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['ok']} | {'; '.join(map(str, c['problems'])) or '-'} |"
              for c in report["checks"]]
    skipped = report.get("skipped") or []
    if skipped:
        lines += ["", f"Not run ({len(skipped)} of {len(rows) + len(skipped)} cells; "
                      f"--budget-s {report['budget_s']} was spent): "
                  + ", ".join(f"{c['dataset']} {c['model']} {c['readout']} L={c['layers']}"
                              for c in skipped)]
    failed = [r for r in rows if not r["ok"]]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['dataset']} {r['model']} {r['readout']} "
                                             f"L={r['layers']}: {'; '.join(r['problems'])}"
                                             for r in failed]
    return "\n".join(lines) + "\n"


def _guarded(fn, failed: dict, *args) -> dict | None:
    """``fn(*args)`` in the main process or a worker; an exception becomes ``failed`` marked as
    a failed check (a failed run is a failed check, not a crash)."""
    torch.set_num_threads(1)
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return dict(failed, ok=False, problems=[f"{type(exc).__name__}: {exc}"],
                    traceback=traceback.format_exc())


def _cell(case: dict, args, work: Path, deadline: float | None) -> dict:
    """One matrix cell: its row, a failed row, or a skip once the budget is spent."""
    if deadline is not None and time.time() > deadline:
        return dict(case, skipped=True)
    return _guarded(check_run, case, case, args, work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="the tiny CPU-test matrix")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (>= 2: the "
                                                              "first is not timed)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--limit-train-batches", type=int, default=None,
                        help="training steps per epoch (Lightning's limit_train_batches): the "
                             "check times steps and compares evaluations, it needs no full epoch")
    parser.add_argument("--workers", type=int, default=1,
                        help="cells run in this many processes at once on the one GPU; with "
                             "more than one, steps/s are lower bounds (the processes share it)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no further matrix cell after this many seconds; the cells "
                             "not run are listed as such (the node and frozen checks still run)")
    parser.add_argument("--only", nargs="+", default=[], metavar="KEY=VALUE",
                        help="run only the matrix cells that match, e.g. readout=histograph "
                             "layers=5 model=gcn,gat")
    parser.add_argument("--matrix-only", action="store_true",
                        help="skip the node-task, frozen-mode and DDP checks")
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides added to every matrix cell, e.g. "
                             "model.residual=pre")
    args = parser.parse_args(argv)
    keys = set(_matrix(args)[0])
    if any("=" not in item or item.split("=", 1)[0] not in keys for item in args.only):
        parser.error(f"--only takes KEY=VALUE with KEY one of {sorted(keys)}, got {args.only}")
    if args.only and not matrix(args):
        parser.error(f"--only {' '.join(args.only)} matches no cell of the matrix; nothing "
                     f"would be checked")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing was measured (use --device cpu for the "
              "CPU version of the checks).")
        return 0
    start = time.time()
    deadline = None if args.budget_s is None else start + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    args.data_dir = args.data_dir or work / "data"
    runs, checks, skipped = [], [], []
    others = [] if args.matrix_only else [check_node, check_frozen, check_ddp]

    def report(complete: bool) -> dict:
        """Written after every cell (atomically), so a run killed at a time limit leaves what it
        measured; ``complete`` is false until the last check is in."""
        rep = dict(device=args.device, gpu=torch.cuda.get_device_name(0) if args.device ==
                   "cuda" else "none", torch=torch.__version__, epochs=args.epochs,
                   limit_train_batches=args.limit_train_batches, workers=args.workers,
                   command="python scripts/gpu_check.py " + " ".join(
                       sys.argv[1:] if argv is None else argv),
                   runs=runs, checks=checks, skipped=skipped, budget_s=args.budget_s,
                   seconds=time.time() - start, complete=complete,
                   ok=complete and bool(runs or checks) and all(r["ok"] for r in runs)
                   and all(c["ok"] for c in checks))
        atomic_write_json(args.out / "gpu_check.json", rep)
        atomic_write_text(args.out / "gpu_check.md", markdown(rep))
        return rep

    def collect(result: dict | None) -> None:
        if result is None:
            return
        if result.get("traceback"):
            print(result["traceback"], file=sys.stderr, flush=True)
        if result.get("skipped"):
            skipped.append({k: v for k, v in result.items() if k != "skipped"})
        else:
            (checks if "dataset" not in result else runs).append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "traceback"}), flush=True)
        report(complete=False)

    if args.workers > 1:
        # CUDA needs fresh (spawned) processes; each worker keeps its own Hydra and peak memory.
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_guarded, c, dict(check=c.__name__), args, work)
                       for c in others]
            futures += [pool.submit(_cell, case, args, work, deadline) for case in matrix(args)]
            for future in as_completed(futures):
                collect(future.result())
    else:
        for case in matrix(args):
            collect(_cell(case, args, work, deadline))
        for check in others:
            collect(_guarded(check, dict(check=check.__name__), args, work))
    rep = report(complete=True)
    print(markdown(rep))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
