"""Where trials run: in this process one after another, or on Ray workers at once.

``--workers N`` starts a local Ray of N CPUs (one trial each); ``--ray ADDRESS`` joins an
existing cluster. Either way results come back as they finish (the search writes its front after
each) and the study is told in trial order at the end of the generation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from torchslim.errors import ConfigError
from torchslim.search.trial import TrialSpec, run_trial


class InProcess:
    """Trials one after another in this process."""

    name = "in process"

    def run(self, specs: list[TrialSpec], stop: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        """Each trial's figures; no trial starts once ``stop()`` (the budget is spent)."""
        for spec in specs:
            if stop():
                return
            yield run_trial(spec)

    def close(self) -> None:
        """Nothing to release."""


class RayWorkers:
    """Trials on Ray: a local cluster of ``workers`` CPUs, or the one at ``address``."""

    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--workers/--ray need Ray: pip install 'ray' (make setup installs it)"
            ) from None
        self._ray = ray
        environment = {"env_vars": _worker_environment()}
        try:
            if address is None:
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env=environment,
                    object_store_memory=200 * 2**20,
                )
            else:
                ray.init(address=address, runtime_env=environment, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(f"cannot start or join Ray ({address or 'local'}): {error}") from None
        self.name = f"Ray at {address}" if address else f"local Ray, {workers} workers"
        self._remote: Any = ray.remote(num_cpus=1, max_retries=0)(run_trial)

    def run(self, specs: list[TrialSpec], stop: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        """Each trial's figures as it finishes; the generation is submitted whole (``stop`` is
        checked before submitting: a generation started runs to its end)."""
        if stop():
            return
        waiting = [self._remote.remote(spec) for spec in specs]
        try:
            while waiting:
                done, waiting = self._ray.wait(waiting, num_returns=1)
                yield self._ray.get(done[0])
        finally:
            for future in waiting:  # Ctrl-C or an error: stop what is still running
                self._ray.cancel(future, force=True)

    def close(self) -> None:
        self._ray.shutdown()


def workers_for(workers: int, address: str | None) -> InProcess | RayWorkers:
    """In process for one local worker, Ray otherwise."""
    if address is None and workers == 1:
        return InProcess()
    return RayWorkers(workers, address)


def _worker_environment() -> dict[str, str]:
    """What a worker needs to import this torchslim and find its data: PYTHONPATH (made
    absolute: workers start elsewhere) and TORCHSLIM_HOME."""
    found = {}
    if "PYTHONPATH" in os.environ:
        parts = os.environ["PYTHONPATH"].split(os.pathsep)
        found["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in parts if p)
    if "TORCHSLIM_HOME" in os.environ:
        found["TORCHSLIM_HOME"] = os.environ["TORCHSLIM_HOME"]
    return found
