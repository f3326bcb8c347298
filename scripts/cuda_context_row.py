"""Measure one card's CUDA context per process and print the planner's row for it.

Run by ``scripts/gpu_selfcheck.py`` (or by hand: ``python scripts/cuda_context_row.py [INDEX]
[--append]``); needs torch with CUDA and pynvml. In a fresh process it creates a bare torch
context, reads its per-process memory from NVML, then creates a cuBLAS handle (vLLM does) and
reads it again; NVML v2's reserved memory comes from the device. The output is one line of
``daemon/gpumgr/plan/cuda_contexts.tsv`` (compute capability, name, driver, bare MiB, cuBLAS
MiB, reserved MiB, source); ``--append`` adds it there, so the planner uses it for every card of
that compute capability (the largest cuBLAS figure wins).
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

TSV = Path(__file__).resolve().parent.parent / "daemon" / "gpumgr" / "plan" / "cuda_contexts.tsv"
MIB = 1 << 20


def _own_mib(pynvml: object, handle: object) -> int:
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)  # type: ignore[attr-defined]
    used = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory]
    return int(sum(used) // MIB)


def measure(index: int) -> str:
    import pynvml
    import torch

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    torch.cuda.set_device(index)
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    bare = _own_mib(pynvml, handle)
    a = torch.ones(64, 64, device="cuda", dtype=torch.float16)
    (a @ a).sum().item()  # creates the cuBLAS handle and its workspace
    torch.cuda.synchronize()
    cublas = _own_mib(pynvml, handle)
    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        reserved = str(int(mem.reserved) // MIB)
    except (pynvml.NVMLError, AttributeError, TypeError):
        reserved = ""
    major, minor = torch.cuda.get_device_capability(index)
    name = pynvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else str(name)
    driver = pynvml.nvmlSystemGetDriverVersion()
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    day = datetime.date.today().isoformat()
    source = f"gpu-selfcheck {day} (torch {torch.__version__}, per-process used_mib in NVML)"
    return "\t".join([f"{major}.{minor}", name, driver, str(bare), str(cublas), reserved, source])


def main(argv: list[str]) -> int:
    index = int(next((a for a in argv[1:] if a.isdigit()), "0"))
    line = measure(index)
    print(line)
    if "--append" in argv:
        with open(TSV, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
