"""Where and how the model steps run: GPU in bf16 when there is one, CPU in fp32 with the task's share of cores,
and each model loaded once per worker process, not once per shard.

datatrove pickles the pipeline for every task, so a model held by a step would be loaded again for each shard;
`load_once` keeps loaded models in the process instead, keyed by what identifies them. After a load, the heap is
frozen (`gc.freeze`): the collector then skips the model's millions of objects on every full collection.
torch is imported inside the functions, so importing a step does not import it.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Hashable
from typing import Any

TASK_CPUS_VARIABLE = "IDEFICS2_TASK_CPUS"  # cores of one task, set by the executors (pipelines.executors)

_LOADED: dict[Hashable, Any] = {}
_LOCK = threading.Lock()


def pick_device(device: str | None = None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def model_dtype(device: str):
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def task_threads() -> int:
    """Threads for torch in this task: the cores the executor gave it (2 workers on 2 cores: 1 each, not 2
    each fighting for the same cores), or all of them when run outside an executor."""
    value = os.environ.get(TASK_CPUS_VARIABLE, "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def load_once(key: Hashable, load: Callable[[str], Any], device: str | None = None, uses_torch: bool = True) -> Any:
    """`load(device)` the first time `key` is asked for in this process; the same object after that. A model that
    does not run on torch (fastText) passes `uses_torch=False` and `device="cpu"`: torch is then never imported."""
    with _LOCK:
        if key not in _LOADED:
            if uses_torch:
                import torch

                device = pick_device(device)
                if device == "cpu":
                    torch.set_num_threads(task_threads())
            _LOADED[key] = load(device or "cpu")
            gc.collect()
            gc.freeze()
        return _LOADED[key]
