"""Aggregate a sweep of result folders into tidy tables: ``python -m histograph.analysis.aggregate <dir>``.

A *job dir* is any folder (at any depth under the sweep dir) that holds ``.hydra/overrides.yaml``;
it is ``done`` when it holds ``results.json``, ``failed`` when it holds ``failed.json`` (keys
``error``, ``traceback``, ``overrides``), ``interrupted`` when a signal stopped it
(``interrupted.json``: resumable by re-running the sweep) and ``missing`` otherwise (killed, or
still running).
When the sweep dir holds Hydra's ``multirun.yaml`` and the sweeper is Hydra's basic sweeper, the
expected jobs are re-expanded from ``hydra.overrides.task`` (and ``hydra.sweeper.params``) with
Hydra's own parser, so a job that never started is listed as ``missing`` too.

Written atomically into the output dir (default: the sweep dir):

* ``jobs.csv``: one row per job (``status``, ``job_dir``, every override key as a column, the
  scalars of ``results.json``, and :data:`DERIVED_COLUMNS` read off its history);
* ``summary.csv`` / ``summary.md``: one row per group of jobs that differ only in ``seed`` and
  ``fold``: mean +- std of ``val`` and ``test``, ``n`` (finished) against ``n_expected``, the
  protocol and its selection rule. Incomplete groups are flagged, never silently averaged;
* ``gin_curves.csv`` (``gin`` protocol groups only): the across-fold mean test curve per epoch;
* ``incomplete.csv``: the failed and missing jobs, with the first line of each error.

Several inputs make one table (``python -m histograph.analysis.aggregate A B --out DIR``): each a
sweep dir or an aggregated dir (its ``jobs.csv``), e.g. one sweep run in pieces on two machines,
or a sweep resumed after its first job folders were lost. A job met more than once (same values
of every override column) is kept once: a finished copy over a failed, interrupted or missing
one, and between equals the later input.

Protocols (``../shared/docs/PROTOCOLS.md``): for ``holdout``/``ogb``/``nested`` each job's
``test`` is read at the epoch selected on its own validation set and the group reports mean +- std
over jobs. For ``gin`` (paper-compatible, OPTIMISTIC) :func:`gin_selection` averages the per-epoch
test accuracy over the folds and reports the best epoch of that mean curve, with the std over
folds at that epoch. Standard deviations are population std (``ddof=0``, as ``numpy.std`` and the
GIN / Errica et al. code bases report them).

Long file: scanning, grouping and the Markdown report are one pipeline over one jobs table, and
the protocols' selection rules are applied inside the grouping; split, each part would need the
others' column conventions.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from histograph.errors import UserError
from histograph.keys import is_result_key
from histograph.training.collapse import collapse_signal, end_values
from histograph.utils import atomic_write_text

log = logging.getLogger("histograph")

#: ``results.json`` scalars copied into ``jobs.csv``.
RESULT_SCALARS = ("dataset", "model", "readout", "layers", "hidden", "seed", "fold", "protocol",
                  "metric", "selected_epoch", "epochs", "val", "test", "collapsed",
                  "collapsed_from", "collapsed_at_selected", "collapse_cause",
                  "collapse_signal", "num_params",
                  "wall_time_s", "mode", "selection")
#: A run whose selected epoch lies in the last this share of its epochs was still improving on
#: validation when it stopped: more epochs may change its figure (issue 12 asks that studies say
#: how many runs did).
LATE_SHARE = 0.1
#: ``LATE_SHARE`` as the tables and reports write it ("10%").
LATE_TEXT = f"{LATE_SHARE:.0%}"
#: Columns ``jobs.csv`` derives from ``results.json`` (not settings): the last history entry's
#: MAD and how near the run's end came to each collapse test (:func:`end_values`).
DERIVED_COLUMNS = ("mad_last", "loss_vs_prior_end", "pred_majority_end")
#: Override keys that are repetitions of one setting, not axes of the comparison.
REPLICATE_KEYS = ("seed", "fold")
#: Result keys that are per-job inputs rather than settings (a frozen run's source checkpoint
#: differs per fold), so they never define a group either.
PER_JOB_KEYS = ("backbone_ckpt",)


def is_axis_key(key: str) -> bool:
    """Whether an override key may split the summary into groups: a result key
    (:func:`histograph.keys.is_result_key`) that is neither a replicate nor a per-job input.
    Non-axis overrides stay columns of ``jobs.csv``."""
    key = _key(key)
    return is_result_key(key) and key not in REPLICATE_KEYS and key not in PER_JOB_KEYS
STATUSES = ("done", "failed", "interrupted", "missing")
#: Which copy of a job a merge keeps: the higher rank (then the later input).
STATUS_RANK = {"done": 3, "failed": 2, "interrupted": 1, "missing": 0}
#: ``RESULT_SCALARS`` that an override can set too (``dataset=nci1``, ``fold=3``): in a
#: ``jobs.csv`` read back, such a column before the results block is an override column.
OVERRIDABLE_SCALARS = ("dataset", "model", "readout", "seed", "fold", "protocol", "mode")
GIN_SELECTION = ("OPTIMISTIC: epoch with the best test accuracy averaged over the folds "
                 "(selection on test)")


# ---------------------------------------------------------------------- gin arithmetic
@dataclass(frozen=True)
class GinSelection:
    """Result of :func:`gin_selection`.

    :param epoch: 0-based best epoch of the across-fold mean test curve (first one on ties).
    :param mean: mean test metric over the folds at :attr:`epoch`.
    :param std: population std over the folds at :attr:`epoch`.
    :param curve: the across-fold mean test metric per epoch.
    :param curve_std: the std over folds per epoch.
    :param n: number of runs averaged.
    :param epochs: length of the curve (the shortest run, when lengths differ).
    """

    epoch: int
    mean: float
    std: float
    curve: np.ndarray
    curve_std: np.ndarray
    n: int
    epochs: int


def gin_selection(curves: Sequence[Sequence[float]]) -> GinSelection:
    r"""The GIN protocol's selection (Xu et al., ICLR 2019, "How Powerful are Graph Neural
    Networks?"; used by the HISTOGRAPH paper): given the per-epoch test metric of each fold,

    .. math::
        \bar a_e = \frac{1}{k} \sum_{f=1}^{k} a_{f,e}, \qquad
        e^\star = \arg\max_e \bar a_e, \qquad
        \text{report } \bar a_{e^\star} \pm \operatorname{std}_f(a_{f,e^\star}).

    The epoch is selected on the test folds themselves, so the figure is optimistic. Runs of
    different lengths are cut to the shortest one.

    :param curves: one sequence of per-epoch test values per fold (or fold x seed).
    :raises ValueError: when no curve (or an empty one) is given.
    """
    if len(curves) == 0:
        raise ValueError("gin_selection needs at least one per-epoch test curve.")
    epochs = min(len(c) for c in curves)
    if epochs == 0:
        raise ValueError("gin_selection got an empty test curve; each run needs >= 1 epoch.")
    matrix = np.asarray([list(c)[:epochs] for c in curves], dtype=np.float64)  # [runs, epochs]
    curve = matrix.mean(axis=0)
    curve_std = matrix.std(axis=0)
    best = int(np.argmax(curve))  # first maximum
    return GinSelection(epoch=best, mean=float(curve[best]), std=float(curve_std[best]),
                        curve=curve, curve_std=curve_std, n=len(matrix), epochs=epochs)


# ---------------------------------------------------------------------- overrides
@functools.lru_cache(maxsize=1)
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _key(override: str) -> str:
    """``+model.layers=4`` -> ``model.layers``."""
    return override.split("=", 1)[0].lstrip("+~")


def _typed(text: str) -> Any:
    """``"4"`` -> 4, ``"0.5"`` -> 0.5, ``"true"`` -> True; other text stays a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn Hydra override strings into ``{key: value}`` (``+``/``~`` prefixes dropped)."""
    out: dict[str, Any] = {}
    for item in overrides:
        item = str(item)
        if "=" not in item:  # e.g. a deletion "~key"
            out[_key(item)] = None
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+~")] = _typed(value)
    return out


def _canonical(overrides: Iterable[str]) -> frozenset:
    """An order-free identity of a job's overrides, as Hydra writes them."""
    pairs = []
    parser = _parser()
    for item in overrides:
        try:
            ov = parser.parse_override(str(item))
            pairs.append((ov.get_key_element().lstrip("+~"), ov.get_value_element_as_str()))
        except Exception:  # noqa: BLE001 - keep the raw text when Hydra cannot parse it
            pairs.append((_key(str(item)), str(item).split("=", 1)[-1]))
    return frozenset(pairs)


def expected_jobs(sweep_dir: str | Path) -> list[list[str]] | None:
    """The jobs Hydra's basic sweeper launches for ``<sweep_dir>/multirun.yaml``.

    Returns the override lists (one per job) or ``None`` when there is no ``multirun.yaml`` or the
    sweeper is not Hydra's basic sweeper (e.g. Optuna, whose trials cannot be known in advance).
    """
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        conf = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("Cannot read %s (%s); expected jobs unknown.", path, exc)
        return None
    hydra_node = conf.get("hydra") or {}
    sweeper = (hydra_node.get("sweeper") or {})
    if "BasicSweeper" not in str(sweeper.get("_target_", "BasicSweeper")):
        return None
    params = sweeper.get("params") or {}
    task = list((hydra_node.get("overrides") or {}).get("task") or [])
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        batches = BasicSweeper.split_arguments(_parser().parse_overrides(arguments), None)
    except Exception as exc:  # noqa: BLE001 - e.g. glob() sweeps need the config loader
        log.warning("Cannot expand the sweep of %s (%s); expected jobs unknown.", path, exc)
        return None
    return [list(job) for batch in batches for job in batch]


# ---------------------------------------------------------------------- scanning
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("Cannot read %s (%s); the job counts as failed.", path, exc)
        return None


def find_job_dirs(sweep_dir: str | Path) -> list[Path]:
    """Every folder under ``sweep_dir`` (the dir itself included) with ``.hydra/overrides.yaml``.

    A folder that holds other job dirs below it (e.g. the run dir of a nested CV, whose jobs live
    in ``fold_<f>/...``) is a parent, not a job, and is left out.
    """
    root = Path(sweep_dir)
    found = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    parents = {a for d in found for a in d.parents if a in found}
    return sorted(found - parents, key=lambda p: (len(p.relative_to(root).parts), str(p)))


def _job_record(job_dir: Path, root: Path) -> tuple[dict[str, Any], list[str], dict | None]:
    """One ``jobs.csv`` row (without override columns), the job's overrides and its results."""
    try:
        overrides = list(yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
                         or [])
    except (OSError, yaml.YAMLError):
        overrides = []
    rel = str(job_dir.relative_to(root)) if job_dir != root else "."
    row: dict[str, Any] = {"status": "missing", "job_dir": rel, "error": None}
    results = None
    if (job_dir / "results.json").is_file():
        results = _read_json(job_dir / "results.json")
        if results is None:
            row.update(status="failed", error="unreadable results.json")
        else:
            row["status"] = "done"
    elif (job_dir / "failed.json").is_file():
        failure = _read_json(job_dir / "failed.json") or {}
        row["status"] = "failed"
        error = str(failure.get("error") or "failed (no message)").strip()
        row["error"] = _relative_paths(error.splitlines()[0], job_dir, rel) if error else "failed"
    elif (job_dir / "interrupted.json").is_file():
        stop = _read_json(job_dir / "interrupted.json") or {}
        row["status"] = "interrupted"
        row["error"] = (f"stopped by {stop.get('signal', 'a signal')} after "
                        f"{stop.get('completed_epochs', '?')} epochs (resumable)")
    else:
        row["error"] = "no results.json (never finished: killed, or still running)"
    return row, [str(o) for o in overrides], results


def _relative_paths(message: str, job_dir: Path, rel: str) -> str:
    """``message`` with every absolute path into the job's folder written relative to the sweep.

    Error messages name files by absolute path (``.../<job>/checkpoints/last.ckpt``); copied into
    committed tables they would name the machine and the folder the job first ran in, which may
    since have moved. Matched by the job folder's own name, so a moved folder is caught too.
    """
    pattern = r"(?<![\w.])/(?:[^\s/]+/)*" + re.escape(job_dir.name) + r"(?=/|\s|$|[,;:)])"
    return re.sub(pattern, lambda _: rel, message)


def collect_jobs(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[str], dict[str, dict]]:
    """Scan ``sweep_dir``: the jobs table, the override columns, and results by ``job_dir``."""
    root = Path(sweep_dir)
    rows, override_lists, all_results = [], [], {}
    for job_dir in find_job_dirs(root):
        row, overrides, results = _job_record(job_dir, root)
        rows.append(row)
        override_lists.append(overrides)
        if results is not None:
            all_results[row["job_dir"]] = results
    # every multirun.yaml under the root (one per Hydra sweep) names the jobs it launches
    for manifest in sorted(root.rglob("multirun.yaml")):
        expected = expected_jobs(manifest.parent)
        if expected is None:
            continue
        inside = manifest.parent.resolve()
        seen = {_canonical(o) for row, o in zip(rows, override_lists)
                if row["job_dir"] is not None
                and inside in (root / row["job_dir"]).resolve().parents}
        rel = str(manifest.parent.relative_to(root)) if manifest.parent != root else "."
        for job in expected:
            if _canonical(job) not in seen:
                rows.append({"status": "missing", "job_dir": None,
                             "error": f"expected by {rel}/multirun.yaml, no job dir"})
                override_lists.append(job)
    keys: list[str] = []
    for overrides in override_lists:
        for key in parse_overrides(overrides):
            if key not in keys:
                keys.append(key)
    records = []
    for row, overrides in zip(rows, override_lists):
        values = parse_overrides(overrides)
        record = {"status": row["status"], "job_dir": row["job_dir"]}
        record.update({key: values.get(key) for key in keys})
        results = all_results.get(row["job_dir"]) if row["job_dir"] is not None else None
        for name in RESULT_SCALARS:
            value = results.get(name) if results else None
            if name in keys:
                # the override (e.g. dataset=proteins) stays the axis value; a different
                # reading in results.json (PROTEINS) is kept beside it
                if results and value is not None and str(value) != str(record[name]):
                    record[f"{name}_result"] = value
                if record[name] is None:
                    record[name] = value
            else:
                record[name] = value
        if results and results.get("collapsed") and record.get("collapse_signal") is None:
            # results.json from before the signal was recorded: read it off the history
            record["collapse_signal"] = collapse_signal(results.get("history") or {})
        # the last history entry's MAD: near 0 when the stack is over-smoothed
        record["mad_last"] = ((results.get("mad") or [None])[-1] if results else None)
        record.update(end_values((results.get("history") or {}) if results else {}))
        record["error"] = row["error"]
        records.append(record)
    columns = ["status", "job_dir", *keys]
    jobs = pd.DataFrame.from_records(records)
    if jobs.empty:
        return jobs, keys, all_results
    rest = [c for c in jobs.columns if c not in columns]
    return jobs[columns + rest], keys, all_results


def keys_of_table(columns: Sequence[str]) -> list[str]:
    """The override columns of a ``jobs.csv`` written by :func:`collect_jobs`: those between
    ``job_dir`` and the results block, which starts with a ``<name>_result`` column, a result
    scalar no override sets (``layers``, ``val``, ...), a derived column or ``error``.

    A result scalar an override can set (``dataset``) that was not overridden sits at the start
    of the results block and is read as an override column too: it holds one value per job
    either way, so the groups are the same.
    """
    keys = []
    for column in list(columns)[2:]:
        if (column.endswith("_result") or column in DERIVED_COLUMNS or column == "error"
                or (column in RESULT_SCALARS and column not in OVERRIDABLE_SCALARS)):
            break
        keys.append(column)
    return keys


def load_jobs(path: str | Path) -> tuple[pd.DataFrame, list[str], dict[str, dict]]:
    """The jobs of one input: a sweep dir (scanned by :func:`collect_jobs`) or an aggregated dir
    (its ``jobs.csv``; no per-job results then, so no gin curves).

    :raises UserError: when ``path`` is neither.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the multirun dir of a sweep "
                        f"(e.g. logs/sweeps/<name>) or a folder holding its jobs.csv.")
    jobs, keys, results = collect_jobs(root)  # job dirs, or the jobs its multirun.yaml expects
    if not jobs.empty:
        return jobs, keys, results
    if (root / "jobs.csv").is_file():
        jobs = pd.read_csv(root / "jobs.csv")
        return jobs, keys_of_table(jobs.columns), {}
    raise UserError(f"No job dirs (folders with .hydra/overrides.yaml) and no jobs.csv under "
                    f"{root}; pass the multirun dir of a sweep or its aggregated folder.")


def _identity_text(value: Any) -> str:
    """One job setting as text that a CSV round trip keeps (64 and 64.0 read back alike)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def merge_jobs(paths: Sequence[str | Path]
               ) -> tuple[pd.DataFrame, list[str], dict[str, dict], dict[str, Path]]:
    """The jobs of several inputs (:func:`load_jobs`) as one table, each job once.

    A job's identity is its values of every override column (the union over the inputs); of
    several copies the one with the best status (:data:`STATUS_RANK`: done, failed,
    interrupted, missing) is kept, and between equals the later input's.

    :returns: ``(jobs, keys, results, sources)``: the table, the override columns, the
        ``results.json`` of each kept finished job scanned from a sweep dir (by ``job_dir``),
        and the input each of those came from (by ``job_dir``).
    """
    frames, keys, found = [], [], []
    for order, path in enumerate(paths):
        jobs, input_keys, results = load_jobs(path)
        keys += [k for k in input_keys if k not in keys]
        frames.append(jobs.assign(_input=order))
        found.append((Path(path), results))
    jobs = pd.concat(frames, ignore_index=True, sort=False)
    for key in keys:
        if key not in jobs:
            jobs[key] = None
    replaced = 0
    if len(frames) > 1:  # one input is taken as it is (a nested CV repeats overrides by fold)
        identity = jobs[keys].apply(lambda row: "\x1f".join(map(_identity_text, row)), axis=1)
        rank = jobs["status"].map(STATUS_RANK).fillna(-1)
        best = (pd.DataFrame({"identity": identity, "rank": rank, "input": jobs["_input"]})
                .sort_values(["rank", "input"], kind="stable")
                .drop_duplicates("identity", keep="last").index)
        replaced = len(jobs) - len(best)
        jobs = jobs.loc[sorted(best)].reset_index(drop=True)
    if replaced:
        log.info("Merged %d inputs: %d jobs, %d duplicate copies left out (a finished copy, "
                 "else the later input's, kept).", len(paths), len(jobs), replaced)
    results, sources = {}, {}
    for job_dir, order in zip(jobs["job_dir"], jobs["_input"]):
        root, input_results = found[order]
        if isinstance(job_dir, str) and job_dir in input_results:
            results[job_dir] = input_results[job_dir]
            sources[job_dir] = root
    rest = [c for c in jobs.columns if c not in ("status", "job_dir", *keys, "_input")]
    return jobs[["status", "job_dir", *keys, *rest]], keys, results, sources


# ---------------------------------------------------------------------- summary
def _std(values: np.ndarray) -> float:
    return float(np.std(values)) if len(values) else math.nan


def _unique(series: pd.Series) -> Any:
    values = [v for v in series.dropna().unique().tolist()]
    if not values:
        return None
    return values[0] if len(values) == 1 else "/".join(str(v) for v in values)


def selected_late(selected_epoch: Any, epochs: Any) -> bool:
    """Whether a run's selected (0-based) epoch is among the last ``ceil(LATE_SHARE * epochs)``
    of its ``epochs`` (epoch 18 or 19 of 20, 45-49 of 50, the only epoch of 1); ``False`` when
    either is unknown."""
    try:
        selected, total = float(selected_epoch), float(epochs)
    except (TypeError, ValueError):
        return False
    if math.isnan(selected) or math.isnan(total):
        return False
    return selected >= total - math.ceil(LATE_SHARE * total)


def _axes(jobs: pd.DataFrame, keys: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Override keys that vary across jobs (the axes) and those that are constant."""
    axes, constant = [], {}
    for key in keys:
        if not is_axis_key(key):
            continue
        values = jobs[key].astype(str).unique()
        if len(values) > 1:
            axes.append(key)
        else:
            constant[key] = jobs[key].iloc[0]
    return axes, constant


def summarize(jobs: pd.DataFrame, keys: Sequence[str], results: dict[str, dict]
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per group of jobs (all swept axes except seed and fold) and the gin curves."""
    axes, _ = _axes(jobs, keys)
    rows, curve_rows = [], []
    grouped = jobs.groupby(axes, dropna=False, sort=False) if axes else [((), jobs)]
    for group_key, group in grouped:
        group_key = group_key if isinstance(group_key, tuple) else (group_key,)
        done = group[group["status"] == "done"]
        protocol = _unique(done["protocol"]) if len(done) else None
        if protocol is None and "protocol" in group:
            protocol = _unique(group["protocol"])
        row: dict[str, Any] = dict(zip(axes, group_key))
        row.update({
            "protocol": protocol,
            "metric": _unique(done["metric"]) if len(done) else None,
            "n": int(len(done)),
            "n_expected": int(len(group)),
            "n_failed": int((group["status"] == "failed").sum()),
            "n_missing": int((group["status"] == "missing").sum()),
            "n_interrupted": int((group["status"] == "interrupted").sum()),
        })
        row["complete"] = row["n"] == row["n_expected"]
        # runs that ended predicting one class (histograph/training/collapse.py): counted, and
        # shown beside the mean they are part of
        row["n_collapsed"] = int(done["collapsed"].fillna(False).astype(bool).sum()) \
            if "collapsed" in done else 0
        row["n_over_smoothed"] = int((done["collapse_cause"] == "over_smoothing").sum()) \
            if "collapse_cause" in done else 0
        val = done["val"].dropna().astype(float).to_numpy()
        test = done["test"].dropna().astype(float).to_numpy()
        row.update(val_mean=float(val.mean()) if len(val) else math.nan, val_std=_std(val),
                   test_mean=float(test.mean()) if len(test) else math.nan,
                   test_std=_std(test))
        row["selected_epoch"] = (float(done["selected_epoch"].astype(float).mean())
                                 if len(done) else math.nan)
        row["n_selected_late"] = int(sum(selected_late(s, e) for s, e in
                                         zip(done["selected_epoch"], done["epochs"])))
        row["epochs"] = int(done["epochs"].max()) if len(done) else None
        row["selection"] = _unique(done["selection"]) if len(done) else None
        test_curves = [(results.get(d) or {}).get("history", {}).get("test")
                       for d in done["job_dir"]]  # none for jobs read back from a jobs.csv
        sel = gin_selection(test_curves) if len(done) and all(test_curves) else None
        if sel is not None:
            # the gin rule applied to these runs' own test curves: what selecting on the test
            # folds would report (for gin rows it is the reported figure itself)
            row.update(testsel_mean=sel.mean, testsel_std=sel.std, testsel_epoch=sel.epoch)
        if protocol == "gin" and sel is not None:
            # under gin each job's own `test` is its last epoch (no validation to select on)
            row.update(test_last_mean=row["test_mean"], test_last_std=row["test_std"],
                       test_mean=sel.mean, test_std=sel.std, selected_epoch=float(sel.epoch),
                       epochs=sel.epochs, selection=GIN_SELECTION)
            if len({len(c) for c in test_curves}) > 1:
                row["selection"] += f" (runs of unequal length cut to {sel.epochs} epochs)"
            for epoch, (m, sd) in enumerate(zip(sel.curve, sel.curve_std)):
                curve_rows.append({**dict(zip(axes, group_key)), "epoch": epoch,
                                   "test_mean": float(m), "test_std": float(sd), "n": sel.n,
                                   "best": epoch == sel.epoch})
        elif protocol == "gin" and len(done):
            row["selection"] = "gin selection impossible: a run has no per-epoch test history"
        rows.append(row)
    summary = pd.DataFrame.from_records(rows)
    if axes and len(summary):
        try:  # numbers in numeric order (model.layers 2, 4, 16 rather than 16, 2, 4)
            summary = summary.sort_values(axes, kind="stable", na_position="last")
        except TypeError:  # an axis mixing numbers and text: keep the scan order
            pass
        summary = summary.reset_index(drop=True)
    curves = pd.DataFrame.from_records(curve_rows)
    return summary, curves


# ---------------------------------------------------------------------- markdown
def _pct(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table (no dependency on ``tabulate``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame, jobs: pd.DataFrame, keys: Sequence[str],
                     title: str) -> str:
    """The summary as Markdown: the table, each protocol's selection rule, incomplete jobs."""
    axes, constant = _axes(jobs, keys)
    out = [f"# {title}", ""]
    if constant:
        out += ["Fixed overrides: " + ", ".join(f"`{k}={v}`" for k, v in constant.items()), ""]
    out += ["Metric in % (mean ± population std over the runs of each row; n = finished runs / "
            "expected runs). `gin` rows are OPTIMISTIC (epoch selected on the test folds). "
            "`collapsed`: finished runs that ended predicting (nearly) one class, included in "
            "the mean; `over-smoothed`: of those, runs whose readout sees only a last layer with "
            "nearly parallel node states (docs/training.md).", ""]
    header = [*axes, "protocol", "metric", "n", "val", "test", "epoch", "collapsed", "complete",
              "test if selected on test"]
    rows = []
    for _, r in summary.iterrows():
        protocol = r["protocol"]
        label = f"{protocol} (optimistic)" if protocol == "gin" else protocol
        rows.append([*(r[a] for a in axes), label, r["metric"], f"{r['n']}/{r['n_expected']}",
                     _pct(r["val_mean"], r["val_std"]), _pct(r["test_mean"], r["test_std"]),
                     ("" if pd.isna(r["selected_epoch"]) else f"{round(r['selected_epoch'], 1):g}")
                     + (f" ({r['n_selected_late']} late)" if r.get("n_selected_late") else ""),
                     f"{r.get('n_collapsed', 0)}/{r['n']}"
                     + (f" ({r['n_over_smoothed']} over-smoothed)"
                        if r.get("n_over_smoothed") else ""),
                     "yes" if r["complete"] else
                     f"NO ({r['n_failed']} failed, {r['n_missing']} missing"
                     + (f", {r['n_interrupted']} interrupted)" if r.get("n_interrupted")
                        else ")"),
                     _pct(r.get("testsel_mean"), r.get("testsel_std"))])
    out += [markdown_table(header, rows), ""]
    rules = summary.dropna(subset=["protocol"]).drop_duplicates("protocol")
    if len(rules):
        out += ["Selection rules:", ""]
        out += [f"- `{r['protocol']}`: {r['selection']}" for _, r in rules.iterrows()]
        out += ["- `epoch`: the gin best epoch (0-based), else the mean of the per-run "
                "selected epochs; `(k late)`: k runs selected an epoch in the last "
                f"{LATE_TEXT} of their epochs (more epochs may change them).",
                "- `test if selected on test`: the same runs scored with the gin rule (best "
                "epoch of the across-run mean test curve): OPTIMISTIC, shown only to measure "
                "how much selecting on the test folds adds.", ""]
    bad = jobs[jobs["status"] != "done"]
    if len(bad):
        out += [f"## Failed or missing jobs ({len(bad)} of {len(jobs)})", ""]
        cols = [k for k in keys if k in bad.columns]
        out += [markdown_table(["status", "job_dir", *cols, "error"],
                               ([r["status"], r["job_dir"], *(r[c] for c in cols), r["error"]]
                                for _, r in bad.iterrows())), ""]
    else:
        out += [f"All {len(jobs)} jobs finished.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------- entry points
def aggregate(sweep_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None
              ) -> dict[str, Any]:
    """Scan a sweep dir and write ``jobs.csv``, ``summary.csv``, ``summary.md``,
    ``incomplete.csv`` (and ``gin_curves.csv`` for gin groups) atomically into ``out_dir``.

    :param sweep_dir: a Hydra multirun dir, or any folder holding job dirs at any depth, or an
        aggregated dir (its ``jobs.csv``); or a list of these, merged by :func:`merge_jobs`.
    :param out_dir: where to write the tables (default: ``sweep_dir``; required for a list).
    :returns: ``{"jobs", "summary", "curves", "incomplete"}`` DataFrames, ``"markdown"`` (the
        text of ``summary.md``), ``"paths"`` (name -> written file), and ``"results"`` /
        ``"sources"`` (each finished job's ``results.json`` and input folder, by ``job_dir``,
        for the jobs scanned from sweep dirs).
    :raises UserError: when an input is neither, or no input holds a job.
    """
    paths = [sweep_dir] if isinstance(sweep_dir, (str, Path)) else list(sweep_dir)
    if not paths:
        raise UserError("No sweep dir given; pass the multirun dir of a sweep.")
    if len(paths) > 1 and out_dir is None:
        raise UserError("Several inputs need an output folder; add --out <folder>.")
    jobs, keys, results, sources = merge_jobs(paths)
    if jobs.empty:
        raise UserError(f"No job under {', '.join(map(str, paths))}; pass the multirun dir of a "
                        f"sweep.")
    summary, curves = summarize(jobs, keys, results)
    incomplete = jobs[jobs["status"] != "done"].reset_index(drop=True)
    out = Path(out_dir) if out_dir is not None else Path(paths[0])
    out.mkdir(parents=True, exist_ok=True)
    title = " + ".join(Path(p).resolve().name for p in paths)
    markdown = summary_markdown(summary, jobs, keys, title=f"Summary of {title}")
    paths_out = {"jobs": out / "jobs.csv", "summary": out / "summary.csv",
                 "markdown": out / "summary.md", "incomplete": out / "incomplete.csv"}
    atomic_write_text(paths_out["jobs"], jobs.to_csv(index=False))
    atomic_write_text(paths_out["summary"], summary.to_csv(index=False))
    atomic_write_text(paths_out["markdown"], markdown)
    atomic_write_text(paths_out["incomplete"], incomplete.to_csv(index=False))
    if not curves.empty:
        paths_out["curves"] = out / "gin_curves.csv"
        atomic_write_text(paths_out["curves"], curves.to_csv(index=False))
    return {"jobs": jobs, "summary": summary, "curves": curves, "incomplete": incomplete,
            "markdown": markdown, "paths": paths_out, "results": results, "sources": sources}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m histograph.analysis.aggregate <dir>... [--out DIR]``: print the summary."""
    parser = argparse.ArgumentParser(prog="python -m histograph.analysis.aggregate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", nargs="+",
                        help="multirun dir (job dirs at any depth) or aggregated dir (jobs.csv); "
                             "several are merged into one table (then --out is required)")
    parser.add_argument("--out", default=None, help="output folder (default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        result = aggregate(args.sweep_dir, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"[histograph] wrote {', '.join(str(p) for p in result['paths'].values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
