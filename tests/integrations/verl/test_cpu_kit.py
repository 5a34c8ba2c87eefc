"""The CPU kit on its own: the platform verl gets with ``VERL_PLATFORM=cpu``, the registrations
``import verl`` makes, and the transformers server's vLLM semantics (driven directly, no Ray)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("verl", reason="verl is not installed (the verl integration tests need rlix-plugin[verl])")

import torch

from rlix_plugin.testing.verl_cpu import ROLLOUT_NAME, assets, cpu_overrides
from rlix_plugin.testing.verl_cpu.platform import one_backend_per_device
from rlix_plugin.testing.verl_cpu.server import EngineAsleepError, TransformersCpuServer

PROBE = textwrap.dedent(
    """
    import socket, torch, torch.distributed as dist
    import verl
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_id, get_torch_device
    from verl.utils.distributed import initialize_global_process_group_ray
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    platform = get_platform()
    print("RESULT platform", platform.device_name, platform.communication_backend_name(), platform.ray_resource_name())
    print("RESULT device", get_device_id(), torch.ones(2).to(get_device_id()).device, get_torch_device().mem_get_info()[1] > 0)
    print("RESULT rollout", get_rollout_replica_class("transformers_cpu").__name__,
          get_rollout_class("transformers_cpu", "async").__name__)
    print("RESULT engine", EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    initialize_global_process_group_ray()  # verl's own call: backend "cpu:gloo,cpu:gloo"
    t = torch.ones(3); dist.all_reduce(t)
    print("RESULT gloo", dist.get_backend(), t.tolist())
    """
)


def _probe(**env: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    lines = dict(
        line.removeprefix("RESULT ").split(" ", 1) for line in result.stdout.splitlines() if line.startswith("RESULT ")
    )
    assert "platform" in lines, result.stdout[-2000:] + result.stderr[-4000:]
    return lines


def test_verl_on_the_cpu_platform_places_tensors_collects_over_gloo_and_finds_the_kit():
    lines = _probe(VERL_PLATFORM="cpu")
    assert lines["platform"] == "cpu gloo GPU"
    assert lines["device"] == "cpu cpu True"
    assert lines["rollout"] == "TransformersCpuReplica TransformersCpuAdapter"
    assert lines["engine"] == "FSDPEngineWithLMHead"
    assert lines["gloo"] == "cpu:gloo [1.0, 1.0, 1.0]"


def test_the_cpu_platform_is_never_picked_unasked():
    from rlix_plugin.testing.verl_cpu.platform import PlatformCPU

    assert PlatformCPU().is_platform_available(use_smi_check=True) is False


def test_one_backend_per_device():
    assert one_backend_per_device("cpu:gloo,cpu:gloo") == "cpu:gloo"
    assert one_backend_per_device("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
    assert one_backend_per_device("gloo") == "gloo" and one_backend_per_device(None) is None


def test_overrides_select_the_kit_and_validate_the_delay():
    overrides = cpu_overrides(token_delay_s=0.5)
    assert f"actor_rollout_ref.rollout.name={ROLLOUT_NAME}" in overrides
    assert overrides[-1].endswith(f"engine_kwargs.{ROLLOUT_NAME}.token_delay_s=0.5")
    assert not any("token_delay_s" in o for o in cpu_overrides())
    with pytest.raises(ValueError, match="-1"):
        cpu_overrides(token_delay_s=-1)


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return assets.build(tmp_path_factory.mktemp("tiny"))


def make_server(tiny, free_cache_engine=True, token_delay_s=0.0):
    from verl.workers.config import HFModelConfig, RolloutConfig

    config = RolloutConfig(
        name=ROLLOUT_NAME,
        prompt_length=16,
        response_length=6,
        max_model_len=32,
        free_cache_engine=free_cache_engine,
        dtype="float32",
        engine_kwargs={ROLLOUT_NAME: {"token_delay_s": token_delay_s}},
    )
    return TransformersCpuServer(config, HFModelConfig(path=str(tiny.model)), replica_rank=0)


def weights(tiny):
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(tiny.model).state_dict())


PROMPT = [1, 5, 7, 9]


def test_weights_are_valid_only_after_a_weight_update_and_sleep_drops_them(tiny):
    async def scenario():
        server = make_server(tiny)
        await server.launch()
        with pytest.raises(EngineAsleepError, match="weights invalid"):
            await server.generate(PROMPT, {"temperature": 0}, "r0")
        await server.update_weights(weights(tiny), global_steps=3)
        out = await server.generate(PROMPT, {"temperature": 0, "max_tokens": 4, "logprobs": True}, "r1")
        assert out.stop_reason == "completed" and 1 <= len(out.token_ids) <= 4
        assert len(out.log_probs) == len(out.token_ids) and out.extra_fields["global_steps"] == 3
        await server.sleep()
        state = await server.describe()
        assert (state["weights"], state["kv_cache"]) == ("released", False)
        with pytest.raises(EngineAsleepError):
            await server.generate(PROMPT, {}, "r2")
        with pytest.raises(EngineAsleepError, match="released"):
            await server.update_weights(weights(tiny))
        await server.wake_up(tags=["weights"])
        assert (await server.describe())["weights"] == "invalid"  # re-allocated, not reloaded
        await server.update_weights(weights(tiny), global_steps=4)
        with pytest.raises(EngineAsleepError, match="kv_cache released"):
            await server.generate(PROMPT, {}, "r3")
        await server.wake_up(tags=["kv_cache"])
        assert (await server.generate(PROMPT, {"max_tokens": 2}, "r4")).extra_fields["global_steps"] == 4

    asyncio.run(scenario())


def test_a_bad_weight_update_names_the_tensor_and_loads_nothing(tiny):
    async def scenario():
        server = make_server(tiny)
        await server.launch()
        bad = weights(tiny)
        name = next(iter(bad))
        bad[name] = torch.zeros(1)
        with pytest.raises(ValueError, match="wrong shape"):
            await server.update_weights(bad)
        assert (await server.describe())["weights"] == "invalid"

    asyncio.run(scenario())


def test_without_free_cache_engine_sleep_frees_nothing(tiny):
    async def scenario():
        server = make_server(tiny, free_cache_engine=False)
        await server.launch()
        await server.update_weights(weights(tiny))
        await server.sleep()
        assert (await server.describe())["weights"] == "valid"

    asyncio.run(scenario())


def test_abort_returns_partial_tokens_and_the_gate_rejects_or_parks_until_resume(tiny):
    async def scenario():
        server = make_server(tiny, token_delay_s=0.05)
        await server.launch()
        await server.update_weights(weights(tiny))
        params = {"temperature": 0, "max_tokens": 6, "ignore_eos": True}
        # Run until a token is out, then abort with rejection: partial tokens, "aborted".
        running = asyncio.ensure_future(server.generate(PROMPT, dict(params), "a"))
        while (await server.describe())["generated_tokens"] == 0:
            await asyncio.sleep(0)
        result = await server.abort_all_requests(reject_request=True)
        partial = await running
        assert result["aborted_count"] == 1 and result["request_ids"] == ["a"]
        assert partial.stop_reason == "aborted" and 1 <= len(partial.token_ids) < 6
        # A late arrival is refused at once, without generating.
        before = (await server.describe())["generated_tokens"]
        late = await server.generate(PROMPT, dict(params), "b")
        assert late.stop_reason == "aborted" and late.token_ids == []
        assert (await server.describe())["generated_tokens"] == before
        # A plain abort parks late arrivals instead; only resume_generation lets them in.
        await server.resume_generation()
        await server.abort_all_requests()
        parked = asyncio.ensure_future(server.generate(PROMPT, dict(params), "c"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not parked.done() and (await server.describe())["gate"] == "closed"
        await server.resume_generation()
        assert (await parked).stop_reason == "completed"

    asyncio.run(scenario())
