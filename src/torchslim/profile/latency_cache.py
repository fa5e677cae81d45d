"""The latency model this machine can trust now: calibrations cached per machine and thread count.

A short probe of the machine (``machine_state``) is taken before each use. A cached calibration is
used while the probe agrees with the one taken when it was calibrated, and redone when the machine
has drifted; a calibration made on a busy machine is never cached as this machine's. The table of
replayed ops (``op_times``) lives beside a trusted calibration and starts afresh with each new one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from torchslim._io import write_json
from torchslim._machine import cpu_model
from torchslim.profile import machine_state
from torchslim.profile.latency_model import CALIBRATION_VERSION, LatencyModel, calibrate
from torchslim.profile.machine_state import DRIFT_LIMIT, Trust, drift, verdict
from torchslim.profile.op_times import OpTimes
from torchslim.zoo._assets import home


def _cache_path(threads: int, device: str) -> Any:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    if device.startswith("cuda"):
        slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    name = f"{slug}-{threads}t-torch{torch.__version__}-latency-v{CALIBRATION_VERSION}.json"
    return home() / "hardware" / name


def _cached(path: Any) -> LatencyModel | None:
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        if values.get("version") != CALIBRATION_VERSION or values.get("probe") is None:
            return None
        return LatencyModel.from_dict(values)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable (a cut-off write, another layout): calibrate again


def trusted_model(
    threads: int | None = None, device: str = "cpu", refresh: bool = False, replay_ops: bool = False
) -> tuple[LatencyModel, Trust]:
    """The latency model for this machine and thread count, and whether to trust it now.

    A short probe is taken first. A cached calibration is used while the probe agrees with the
    one taken at calibration; when the machine has drifted it is redone, unless the machine is
    busy now (then the cached one is kept and the answer is "not trusted"). A calibration made
    on a busy machine is never cached as this machine's: it is kept aside as provisional, reused
    only while the machine stays busy (so each busy run does not calibrate again), never trusted.

    With ``replay_ops`` the model predicts each op by its replayed time (``with_table``): the
    table of replayed calls is kept beside a trusted calibration and starts afresh with each new
    one; beside an untrusted one it lives only in memory.
    """
    model, trust = _trusted_model(threads or torch.get_num_threads(), device, refresh)
    if not replay_ops:
        return model, trust
    path = _table_path(model.threads, device) if model.trust.trusted else None
    return model.with_table(OpTimes(model.threads, device, path)), trust


def _table_path(threads: int, device: str) -> Any:
    calibration = _cache_path(threads, device)
    return calibration.with_name(calibration.stem + "-op-times.json")


def _trusted_model(count: int, device: str, refresh: bool) -> tuple[LatencyModel, Trust]:
    path = _cache_path(count, device)
    provisional = path.with_name(path.stem + "-provisional.json")
    now = machine_state.probe_machine(count, device)
    busy_now = verdict(now, count)
    cached = None if refresh else _cached(path)
    if cached is not None and cached.probe is not None:
        moved = drift(cached.probe, now)
        if moved <= DRIFT_LIMIT:
            return cached, busy_now
        if not busy_now.trusted:
            return cached, busy_now.and_(Trust(False, f"{moved:.0%} off its calibration"))
    kept = None if refresh or busy_now.trusted else _cached(provisional)
    if kept is not None:
        return kept, busy_now.and_(kept.trust)
    model = calibrate(count, device)
    if model.trust.trusted:
        _table_path(count, device).unlink(missing_ok=True)  # replayed on the machine as it was
    write_json(path if model.trust.trusted else provisional, model.to_dict())
    return model, model.trust.and_(busy_now)


def calibrated_model(
    threads: int | None = None, device: str = "cpu", refresh: bool = False
) -> LatencyModel:
    """The latency model for this machine and thread count (see ``trusted_model``)."""
    return trusted_model(threads, device, refresh)[0]
