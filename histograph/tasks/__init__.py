"""Tasks: what a run trains and how its parts are built (``configs/task/``, ``configs/mode/``).

A task object is chosen by config (``task=graph|node``, ``mode=end_to_end|frozen``), built by
Hydra from its ``_target_`` (:func:`build_task`), and knows how to build its DataModule, network,
LightningModule and diagnostics; :func:`histograph.train.run` only calls it. Adding a task is
one file here and one config (docs/architecture.md).
"""

from histograph.tasks.base import Network, Task, build_task

__all__ = ["Network", "Task", "build_task"]
