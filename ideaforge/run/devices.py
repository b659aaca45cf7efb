"""Devices of one training worker: GPUs (or CPU slots) handed out to concurrent experiments without overlap."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable

from ideaforge.models import DeviceKind, DeviceTime

log = logging.getLogger(__name__)


class DevicePool:
    """A fixed set of device ids shared by the activities of one worker process (one event loop).

    ``acquire(n)`` waits until ``n`` ids are free and takes the lowest ones; ``release`` gives them back.
    For CPU training workers the ids are just slots (bookkeeping only; CUDA_VISIBLE_DEVICES is not set).
    """

    def __init__(self, device_ids: list[int]) -> None:
        if len(set(device_ids)) != len(device_ids):
            raise ValueError(f"duplicate device ids: {device_ids}")
        self.device_ids = sorted(device_ids)
        self._free = set(device_ids)
        self._cond = asyncio.Condition()

    @property
    def size(self) -> int:
        return len(self.device_ids)

    @property
    def free(self) -> list[int]:
        return sorted(self._free)

    async def acquire(self, count: int = 1) -> list[int]:
        """Wait for ``count`` free ids and take them. Raises ValueError if the pool can never satisfy it."""
        if count < 1:
            raise ValueError(f"device count must be >= 1, got {count}")
        if count > self.size:
            raise ValueError(
                f"experiment needs {count} devices but this worker has {self.size}: {self.device_ids}"
            )
        async with self._cond:
            await self._cond.wait_for(lambda: len(self._free) >= count)
            ids = sorted(self._free)[:count]
            self._free.difference_update(ids)
            return ids

    async def release(self, ids: list[int]) -> None:
        """Give ``ids`` back; releasing an id that is not held is a bug and raises ValueError."""
        async with self._cond:
            bad = [i for i in ids if i not in self.device_ids or i in self._free]
            if bad:
                raise ValueError(f"releasing device ids that are not held: {bad}")
            self._free.update(ids)
            self._cond.notify_all()


class DeviceClock:
    """Device time of one experiment across its attempts: what earlier attempts used (as the last heartbeat a
    retry finds says) plus this attempt's devices x wall seconds since it acquired them (training + eval)."""

    def __init__(self, before: DeviceTime, kind: DeviceKind, clock: Callable[[], float] = time.monotonic) -> None:
        self.before = before
        self.kind = kind
        self.devices = 0
        self._clock = clock
        self._started: float | None = None
        self._stopped: float | None = None

    def start(self, devices: int) -> None:
        """This attempt now holds ``devices`` devices."""
        self.devices = devices
        self._started = self._clock()

    def stop(self) -> None:
        """This attempt gave its devices back: the figure stops growing."""
        if self._started is not None and self._stopped is None:
            self._stopped = self._clock()

    def so_far(self) -> DeviceTime:
        if self._started is None:
            return self.before
        end = self._stopped if self._stopped is not None else self._clock()
        return self.before + DeviceTime.held(self.kind, self.devices, end - self._started)


def detect_gpus() -> list[int]:
    """GPU indices from ``nvidia-smi -L`` ("GPU 0: ..."), or [] where there is no NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("nvidia-smi -L failed: %s", e)
        return []
    return parse_gpu_list(out)


def parse_gpu_list(text: str) -> list[int]:
    """Indices of the ``GPU <n>:`` lines of ``nvidia-smi -L`` output."""
    return [int(m.group(1)) for m in re.finditer(r"^GPU (\d+):", text, re.M)]


def cpu_slots(n: int) -> list[int]:
    """Slot ids 0..n-1 for a CPU training worker."""
    if n < 1:
        raise ValueError(f"a CPU training worker needs at least 1 slot, got {n}")
    return list(range(n))
