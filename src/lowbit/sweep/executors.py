"""Where cells run: local worker processes (the default) or Ray tasks.

Both executors have one small interface, driven by :mod:`lowbit.sweep.driver`::

    executor.start(); executor.capacity      # how many cells run at once
    executor.submit(job)                      # a CellJob
    executor.wait(timeout) -> [CellOutcome]   # the cells that ended meanwhile
    executor.stop(grace) -> [CellOutcome]     # interrupt the running cells (Ctrl-C)
    executor.close()

A worker that dies (SIGKILL, out of memory, a lost node) yields a ``killed``
outcome; the driver decides whether to run the cell again. Neither executor
is a scheduler of its own: the local one is a bounded set of processes, the
Ray one hands every cell to Ray's scheduler with its resource request.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

from lowbit.sweep.worker import KILLED, CellJob, CellOutcome, execute_cell, local_worker_main

RAY_INSTALL_HINT = 'pip install -c constraints.txt -e ".[ray]"'


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class LocalExecutor:
    """Up to ``workers`` cells at once, each in its own process (forked from a preloaded server).

    Each worker process leads its own process group, so a Ctrl-C at the
    terminal reaches only the driver, which then asks every running cell to
    stop (SIGTERM: training saves a checkpoint, a probe keeps its records).
    """

    PRELOAD = ["lowbit.sweep.preload"]  # imported once in the fork server instead of once per cell

    def __init__(self, workers: int, gpu_slots: Optional[List[str]] = None):
        # gpu_slots: one CUDA_VISIBLE_DEVICES value per cell that may run at once (ResourcesSpec.gpu_slots);
        # each running cell holds one, so no two share a GPU beyond what num_gpus allows
        self.gpu_slots = list(gpu_slots or [])
        self.capacity = min(workers, len(self.gpu_slots)) if self.gpu_slots else workers
        self._free_slots = list(self.gpu_slots)
        self._slot_of: Dict[str, str] = {}
        self._running: Dict[str, Tuple[Any, Any, CellJob]] = {}  # cell id -> (process, connection, job)
        self._outcomes: Dict[str, Optional[CellOutcome]] = {}  # received before the process was reaped

    def start(self) -> None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._context = multiprocessing.get_context(method)
        if method == "forkserver":
            self._context.set_forkserver_preload(self.PRELOAD)  # torch imported once, not once per cell

    def submit(self, job: CellJob) -> None:
        if self.gpu_slots:
            job.visible_devices = self._slot_of[job.cell_id] = self._free_slots.pop(0)
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(target=local_worker_main, args=(job, send), name=f"lowbit-{job.cell_id}")
        process.start()
        send.close()  # the child holds the sending end; EOF here once it exits
        self._running[job.cell_id] = (process, receive, job)

    def wait(self, timeout: float) -> List[CellOutcome]:
        if not self._running:
            return []
        handles = {}
        for cell_id, (process, connection, _) in self._running.items():
            handles[process.sentinel] = cell_id
            if cell_id not in self._outcomes:
                handles[connection] = cell_id
        ready = multiprocessing.connection.wait(list(handles), timeout)
        ready.sort(key=lambda handle: isinstance(handle, int))  # outcomes (connections) before exits (sentinels)
        finished = []
        for handle in ready:
            cell_id = handles[handle]
            process, connection, job = self._running[cell_id]
            if handle is connection:
                try:
                    self._outcomes[cell_id] = connection.recv()
                except (EOFError, OSError):
                    self._outcomes[cell_id] = None  # died before reporting; its sentinel follows
                continue
            process.join()
            if cell_id not in self._outcomes and connection.poll():
                try:
                    self._outcomes[cell_id] = connection.recv()
                except (EOFError, OSError):
                    pass
            connection.close()
            del self._running[cell_id]
            if cell_id in self._slot_of:
                self._free_slots.append(self._slot_of.pop(cell_id))
            outcome = self._outcomes.pop(cell_id, None)
            finished.append(outcome or _died(job, process.exitcode))
        return finished

    def stop(self, grace: float = 60.0) -> List[CellOutcome]:
        for process, _, _ in self._running.values():
            _signal_group(process.pid, signal.SIGTERM)
        outcomes: List[CellOutcome] = []
        deadline = time.monotonic() + grace
        while self._running and time.monotonic() < deadline:
            outcomes += self.wait(timeout=0.5)
        for process, _, _ in self._running.values():
            _signal_group(process.pid, signal.SIGKILL)
        while self._running:
            outcomes += self.wait(timeout=1.0)
        return outcomes

    def close(self) -> None:
        if self._running:
            self.stop(grace=0.0)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _died(job: CellJob, exitcode: Optional[int]) -> CellOutcome:
    if exitcode is not None and exitcode < 0:
        reason = f"worker killed by {signal.Signals(-exitcode).name}"
    else:
        reason = f"worker exited with code {exitcode} before reporting"
    return CellOutcome(job.cell_id, KILLED, error=reason)


def _ray_execute(job: CellJob) -> CellOutcome:
    from lowbit.allocator import apply_policy

    apply_policy()  # as the lowbit command and the local workers do (a Ray worker is neither); LOWBIT_MALLOC=default: not
    return execute_cell(job)


class RayExecutor:
    """Every cell a Ray task with the spec's resource request (``num_cpus``, ``num_gpus``).

    ``address`` joins a running cluster (``ray start --head`` on one machine,
    ``ray start --address HEAD:6379`` on the others, then ``--address auto`` or
    ``HEAD:6379`` here); without it a local Ray instance is started on
    127.0.0.1 with ``local_cpus`` CPUs and shut down at the end. A process that
    has already called ``ray.init`` keeps its session (and its shutdown).
    """

    def __init__(self, address: Optional[str], local_cpus: int, num_cpus: float, num_gpus: float):
        self.address = address
        self.local_cpus = local_cpus
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.capacity = 1
        self._refs: Dict[Any, CellJob] = {}

    def start(self) -> None:
        import logging

        try:
            import ray
        except ImportError as error:
            raise ValueError(f"the ray executor needs Ray: {RAY_INSTALL_HINT}") from error
        self._ray = ray
        self._owned = not ray.is_initialized()  # a Ray session this process already holds is used as it is
        common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if self._owned and self.address:
            ray.init(address=self.address, **common)
        elif self._owned:
            ray.init(num_cpus=self.local_cpus, _node_ip_address="127.0.0.1", **common)  # GPUs: as Ray detects them
        resources = ray.cluster_resources()
        slots = [resources.get("CPU", 1.0) / self.num_cpus]
        if self.num_gpus > 0:
            slots.append(resources.get("GPU", 0.0) / self.num_gpus)
        self.capacity = max(1, int(min(slots) + 1e-9))
        if self.num_gpus > 0 and resources.get("GPU", 0.0) < self.num_gpus:
            raise ValueError(
                f"resources.num_gpus={self.num_gpus} but the Ray cluster has {resources.get('GPU', 0.0)} GPUs"
            )
        self._remote = ray.remote(_ray_execute).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)

    def submit(self, job: CellJob) -> None:
        self._refs[self._remote.remote(job)] = job

    def wait(self, timeout: float) -> List[CellOutcome]:
        if not self._refs:
            return []
        ray = self._ray
        ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        finished = []
        for ref in ready:
            job = self._refs.pop(ref)
            try:
                finished.append(ray.get(ref))
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError) as error:
                finished.append(CellOutcome(job.cell_id, KILLED, error=f"Ray worker died: {type(error).__name__}"))
            except ray.exceptions.TaskCancelledError:
                finished.append(CellOutcome(job.cell_id, KILLED, error="cancelled"))
            except ray.exceptions.RayError as error:
                finished.append(CellOutcome(job.cell_id, "failed", error=str(error).strip().splitlines()[-1]))
        return finished

    def stop(self, grace: float = 60.0) -> List[CellOutcome]:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        outcomes: List[CellOutcome] = []
        deadline = time.monotonic() + max(grace, 5.0)
        while self._refs and time.monotonic() < deadline:
            outcomes += self.wait(timeout=0.5)
        outcomes += [CellOutcome(job.cell_id, KILLED, error="cancelled") for job in self._refs.values()]
        self._refs.clear()
        return outcomes

    def close(self) -> None:
        if self._refs:
            self.stop(grace=0.0)
        if self._owned:
            self._ray.shutdown()
