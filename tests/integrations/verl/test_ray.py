"""What has to hold across Ray processes: one local Ray cluster for the whole module.

The cluster advertises 4 logical GPUs over ``CUDA_VISIBLE_DEVICES=0,1,0,1``, the layout
docs/verl.md uses to let two verl jobs place workers on the same physical GPUs; no GPU is used.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

import ray
from ray import cloudpickle

from rlix_plugin.integrations.verl.progress import GroupProgressMixin, ProgressPump

from . import fakes

WAIT_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    # Read by the raylet at start: logical GPU slots 0..3 map onto physical ids 0,1,0,1.
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1,0,1"
    # Test-local classes travel by value: Ray workers cannot import the tests package.
    cloudpickle.register_pickle_by_value(fakes)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        cloudpickle.unregister_pickle_by_value(fakes)
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


@ray.remote(num_cpus=0)
class VerlProbe:
    """A fresh Ray worker process that imports verl, as verl's TaskRunner and workers do."""

    def trainer_mode_class(self) -> str:
        import verl  # noqa: F401  (loads the verl.plugins entry points)
        from verl.trainer.ppo.v1 import get_trainer_cls

        cls = get_trainer_cls("rlix_sync")
        return f"{cls.__module__}.{cls.__qualname__}"


def test_import_verl_in_a_ray_actor_registers_the_trainer_mode():
    probe = VerlProbe.remote()
    try:
        name = ray.get(probe.trainer_mode_class.remote(), timeout=WAIT_S * 3)
    finally:
        ray.kill(probe)
    assert name == "rlix_plugin.integrations.verl.trainer.RlixPPOTrainerSync"


@ray.remote(num_cpus=0, num_gpus=1)
class GpuHolder:
    def visible(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_overcommitted_gpu_slots_map_onto_the_same_physical_gpus():
    holders = [GpuHolder.remote() for _ in range(4)]
    try:
        seen = sorted(ray.get([h.visible.remote() for h in holders], timeout=WAIT_S))
    finally:
        for holder in holders:
            ray.kill(holder)
    # Two "jobs" of 2 GPUs each land on physical GPUs 0 and 1 twice.
    assert seen == ["0", "0", "1", "1"]


class _ProgressWorker(GroupProgressMixin, fakes.FakeWorkerBase):
    pass


ProgressWorker = ray.remote(num_cpus=0)(_ProgressWorker)


def test_pump_delivers_every_group_from_worker_processes_before_flush_returns():
    workers = [ProgressWorker.remote(n=2), ProgressWorker.remote(n=3)]
    received: list[int] = []
    lock = threading.Lock()

    def sink(count: int) -> None:
        with lock:
            received.append(count)

    pump = ProgressPump(workers, sink, poll_s=0.05).start()
    try:
        runs = [workers[0].run_group.remote(f"a{i}") for i in range(5)]
        runs += [workers[1].run_group.remote(f"b{i}") for i in range(4)]
        runs += [workers[1].run_group.remote("val", validate=True)]
        ray.get(runs, timeout=WAIT_S)
        assert pump.flush(WAIT_S)
        with lock:
            total = sum(received)
        assert total == 5 * 2 + 4 * 3
        # Coalesced: never more replies than groups, each reply a positive count.
        assert all(count > 0 for count in received) and len(received) <= 9
    finally:
        pump.stop()
        for worker in workers:
            ray.kill(worker)


def test_pump_survives_a_dead_worker_and_a_failing_sink():
    workers = [ProgressWorker.remote(n=2), ProgressWorker.remote(n=2)]
    calls: list[int] = []

    def sink(count: int) -> None:
        calls.append(count)
        if len(calls) == 1:
            raise RuntimeError("scheduler unreachable")

    pump = ProgressPump(workers, sink, poll_s=0.05).start()
    try:
        ray.kill(workers[0])
        ray.get(workers[1].run_group.remote("x"), timeout=WAIT_S)
        assert pump.flush(WAIT_S)
        ray.get(workers[1].run_group.remote("y"), timeout=WAIT_S)
        assert pump.flush(WAIT_S)
        assert sum(calls) == 4  # both groups reached the sink; the first delivery raised
    finally:
        pump.stop()
        ray.kill(workers[1])


def test_transfer_queue_lives_in_this_ray_jobs_namespace_and_close_kills_only_it():
    import transfer_queue as tq
    from omegaconf import OmegaConf

    from rlix_plugin.integrations.verl import transfer_queue as isolation

    # import verl ran the integration's entry point in this process: TransferQueue is isolated.
    assert isolation.install() is True
    namespace = isolation.job_namespace()
    assert namespace == f"transfer_queue-{ray.get_runtime_context().get_job_id()}"
    assert isolation.isolated("transfer_queue") == namespace and isolation.isolated("other") == "other"

    # Another job's controller, in the namespace TransferQueue hard-codes: it must stay unseen.
    neighbour = VerlProbe.options(name="TransferQueueController", namespace="transfer_queue").remote()
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        try:
            ours = ray.get_actor("TransferQueueController", namespace=namespace)
            assert ours._actor_id != neighbour._actor_id
        finally:
            tq.close()
        # Closing killed our controller only.
        with pytest.raises(ValueError):
            ray.get_actor("TransferQueueController", namespace=namespace)
        assert ray.get_actor("TransferQueueController", namespace="transfer_queue")._actor_id == neighbour._actor_id
    finally:
        ray.kill(neighbour)
