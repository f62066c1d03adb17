"""CPU runs keep the memory a step frees (isd.runtime.keep_freed_memory): the next step's tensors fault no pages."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ALLOCATE = """
import resource, sys, torch
from isd.runtime import resolve_device
resolve_device("cpu")
def step():  # like a step's activations: many large tensors alive at once, then all freed
    xs = [torch.ones(4 << 20) for _ in range(8)]  # 8 x 16 MiB
    return sum(float(x[-1]) for x in xs)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: str) -> int:
    env = {**os.environ, "ISD_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", ALLOCATE], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_a_cpu_run_reuses_freed_pages_and_the_variable_turns_it_off():
    kept, default = page_faults("1"), page_faults("0")
    if default < 5000:
        # a kernel that backs large allocations with 2 MiB pages (transparent huge pages "always") faults 8 times
        # per 16 MiB tensor, at most 1,280 times in 20 steps: too little to count for this comparison
        pytest.skip(f"only {default} page faults in 20 default steps: large allocations use huge pages here")
    # glibc's default maps and unmaps many of them afresh; kept, the steps after the first reuse its pages
    # (here 36,827 page faults against 4,096 in 20 steps)
    assert kept * 4 < default


def test_the_setting_is_made_once_and_reports_whether_it_took(monkeypatch):
    import isd.runtime as runtime

    monkeypatch.setattr(runtime, "_memory_kept", None)
    monkeypatch.setenv("ISD_KEEP_FREED_MEMORY", "0")
    assert runtime.keep_freed_memory() is False
    monkeypatch.setenv("ISD_KEEP_FREED_MEMORY", "1")
    assert runtime.keep_freed_memory() is False  # decided once per process
