"""What the machine lets this process use."""

import os

import pytest

from torchslim._machine import machine_facts, usable_cpus


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cpus_follow_the_affinity_mask_not_the_machine() -> None:
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # what `taskset -c N` does
        assert usable_cpus() == 1
        assert machine_facts()["usable_cpus"] == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cpus() == len(before)
