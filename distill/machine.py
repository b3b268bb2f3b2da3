"""Where and with what a run trained, as far as its results depend on it: the machine (recorded in run.json,
results.json and teacher-cache entries, and compared when a run is resumed or a compare extended on another one) and
the versions of the libraries."""

from __future__ import annotations

import platform

import numpy as np
import torch

from cmcd_edge import __version__
from cmcd_edge.runtime.cpu import read_cpuinfo


def versions() -> dict:
    import onnxruntime

    return {"cmcd_edge": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def made_on(device: torch.device) -> dict:
    """The machine a run trains on, as far as its results depend on it: CPU runs repeat bit for bit on one CPU type
    only (ATen picks its kernels by ``cpu_capability``; MKL and oneDNN by vendor too) and one thread count (the
    kernels split their sums by thread), CUDA runs on one GPU type."""
    return {"cpu": read_cpuinfo()[0] or platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def run_machines(record: dict) -> list[dict]:
    """Every machine a run trained on, from its run.json ``record``: the one it started on (``made_on``) and the one of
    each ``--resume`` (``resumed_on``); none from a run made before versions kept them."""
    return ([record["made_on"]] if "made_on" in record else []) + (record["resumed_on"] if "resumed_on" in record else [])


def other_machines(made: list[dict], here: dict, what: str) -> str | None:
    """A warning when ``made`` (the machines earlier runs recorded) holds one other than ``here``; None otherwise."""
    others = sorted({machine_name(m) for m in made if m != here})
    if not others:
        return None
    return (f"{what} on {' and '.join(others)}; this is {machine_name(here)}: training repeats bit for bit on one CPU (or "
            "GPU) type and thread count only, so what trains here is not what that machine would give (equally valid, "
            "not identical)")


def machine_name(m: dict) -> str:
    """``AMD EPYC (AVX512, 2 threads)``, and the GPU where there is one (a record may lack a field: ``?``)."""
    cpu, cap, threads, gpu = (m[k] if k in m else "?" for k in ("cpu", "cpu_capability", "threads", "gpu"))
    return f"{cpu} ({cap}, {threads} thread{'' if threads == 1 else 's'})" + (f", {gpu}" if gpu not in (None, "?") else "")
