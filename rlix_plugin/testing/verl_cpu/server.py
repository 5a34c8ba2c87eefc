"""A rollout server on transformers that behaves like verl's vLLM server, on the CPU.

One :class:`TransformersCpuServer` actor serves one rollout replica. It keeps the parts of
vLLM's server semantics (``verl/workers/rollout/vllm_rollout/vllm_async_server.py`` in verl
0.9.1) that a scheduler relies on, so a test that passes here exercises the same contract:

* **memory**: ``sleep()`` (with ``free_cache_engine`` on) drops the weights and the KV cache
  (vLLM's level 2); with ``free_cache_engine`` off it frees nothing, as vLLM does.
  ``wake_up(tags)`` re-allocates ``weights`` and / or ``kv_cache``, but re-allocated weights are
  garbage: only :meth:`update_weights` makes them valid, and the server starts invalid (verl's
  ``load_format=dummy``). Generating without valid weights and a KV cache raises.
* **gate**: :meth:`abort_all_requests` closes a submission gate and aborts every request in
  flight; each returns the tokens it has so far with ``stop_reason="aborted"``. Requests that
  arrive while the gate is closed wait for :meth:`resume_generation`, or, after an abort with
  ``reject_request=True``, return at once as aborted without generating. Only
  :meth:`resume_generation` reopens the gate.
* **version**: every answer carries ``extra_fields["global_steps"]``, the version given by the
  last :meth:`set_global_steps` / :meth:`update_weights`.

Generation is greedy or sampled token by token with the model's KV cache, yielding to the event
loop between tokens so that control calls interleave with requests as they do on vLLM.
``engine_kwargs.transformers_cpu.token_delay_s`` adds a wait per token, which stretches a tiny
model's rollout to a realistic length without spending CPU.

:meth:`describe` reports the state and a log of memory transitions, for tests to assert on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlix_plugin.testing.verl_cpu import ENGINE_KWARGS_KEY

log = logging.getLogger(__name__)
# The kit's INFO lines show at verl's level (verl's root logger stays at WARNING).
logging.getLogger(__package__).setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

#: Weights states.
RELEASED, INVALID, VALID = "released", "invalid", "valid"
#: Longest wait for in-flight requests to end after an abort or before a sleep.
DRAIN_TIMEOUT_S = 60.0


class EngineAsleepError(RuntimeError):
    """A request reached the engine while its weights or KV cache were not usable."""


@dataclass
class _Request:
    request_id: str
    aborted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _dtype(name: Any) -> torch.dtype:
    text = str(name or "float32").replace("torch.", "")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    dtype = getattr(torch, aliases.get(text, text), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"rollout dtype {name!r} is not a torch dtype")
    return dtype


class TransformersCpuServer:
    """vLLM-like rollout server for one replica (see the module docstring).

    :param config: verl's ``RolloutConfig`` (dataclass or ``DictConfig``).
    :param model_config: verl's ``HFModelConfig`` (dataclass or ``DictConfig``).
    :param replica_rank: The replica this server serves.
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        options = dict((self.config.engine_kwargs or {}).get(ENGINE_KWARGS_KEY, {}) or {})
        self.token_delay_s = float(options.get("token_delay_s", 0.0) or 0.0)
        if self.token_delay_s < 0:
            raise ValueError(f"engine_kwargs.{ENGINE_KWARGS_KEY}.token_delay_s must be >= 0, got {self.token_delay_s}")
        self.global_steps: int | None = None
        self._model: torch.nn.Module | None = None
        self._shapes: dict[str, tuple[torch.Size, torch.dtype]] = {}
        self._weights = RELEASED
        self._kv_cache = False
        self._gate_closed = False
        self._rejecting = False
        self._reopened = asyncio.Event()
        self._reopened.set()
        self._requests: dict[str, _Request] = {}
        self._events: list[tuple[float, str, Any]] = []
        self._generated = 0
        self._aborted = 0
        self._rejected = 0

    # -- start --------------------------------------------------------------------------------------

    async def launch(self) -> None:
        """Build the model from its config; weights and KV cache allocated, weights invalid."""
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        hf_config = self.model_config.hf_config
        model = AutoModelForCausalLM.from_config(
            hf_config, torch_dtype=_dtype(self.config.dtype), attn_implementation="eager"
        )
        model.eval()
        self._model = model
        self._shapes = {name: (p.shape, p.dtype) for name, p in model.state_dict().items()}
        self._weights, self._kv_cache = INVALID, True
        eos = getattr(self.model_config.generation_config, "eos_token_id", None)
        if eos is None:
            eos = getattr(hf_config, "eos_token_id", None)
        if eos is None and self.model_config.tokenizer is not None:
            eos = self.model_config.tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self._record("launch", {"weights": self._weights, "kv_cache": self._kv_cache})

    # -- memory -------------------------------------------------------------------------------------

    async def sleep(self) -> None:
        """Drop weights and KV cache (vLLM level 2); nothing when ``free_cache_engine`` is off."""
        if not self.config.free_cache_engine:
            self._record("sleep skipped", "free_cache_engine is off")
            return
        if self._requests:
            raise RuntimeError(
                f"replica {self.replica_rank}: sleep with {len(self._requests)} requests in flight; "
                "abort them or wait_for_requests_to_drain() first"
            )
        self._release_weights()
        self._kv_cache = False
        self._record("sleep", {"weights": self._weights, "kv_cache": self._kv_cache})

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate ``tags`` (default both): weights come back invalid, until
        :meth:`update_weights`."""
        tags = list(tags or ["kv_cache", "weights"])
        unknown = sorted(set(tags) - {"weights", "kv_cache"})
        if unknown:
            raise ValueError(f"wake_up tags must be 'weights' or 'kv_cache', got {unknown}")
        if "weights" in tags and self._weights == RELEASED:
            self._allocate_weights()
        if "kv_cache" in tags:
            self._kv_cache = True
        self._record("wake_up", {"tags": sorted(tags), "weights": self._weights, "kv_cache": self._kv_cache})

    async def release_kv_cache(self) -> None:
        if self.config.free_cache_engine:
            self._kv_cache = False
            self._record("release_kv_cache", None)

    async def resume_kv_cache(self) -> None:
        if self.config.free_cache_engine:
            self._kv_cache = True
            self._record("resume_kv_cache", None)

    async def update_weights(self, tensors: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        """Load the full set of named weights; they become valid and tagged ``global_steps``.

        :raises EngineAsleepError: the weights are released (wake ``weights`` first, as on vLLM).
        :raises ValueError: a missing, unknown or wrongly shaped tensor (named); nothing is loaded.
        """
        if self._weights == RELEASED or self._model is None:
            raise EngineAsleepError(f"replica {self.replica_rank}: update_weights while the weights are released")
        names = set(tensors)
        expected = set(self._shapes)
        # Tied embeddings appear once in the trainer's export and twice in the state dict.
        missing = sorted(n for n in expected - names if not self._tied(n, names))
        unknown = sorted(names - expected)
        wrong = sorted(n for n in names & expected if tuple(tensors[n].shape) != tuple(self._shapes[n][0]))
        if missing or unknown or wrong:
            raise ValueError(
                f"replica {self.replica_rank}: weights do not fit the model: missing {missing[:5]}, "
                f"unknown {unknown[:5]}, wrong shape {wrong[:5]}"
            )
        self._model.load_state_dict({n: t for n, t in tensors.items()}, strict=False)
        self._weights = VALID
        if global_steps is not None:
            self.global_steps = int(global_steps)
        self._record("update_weights", {"version": self.global_steps, "tensors": len(names)})

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = int(global_steps)

    async def clear_kv_cache(self) -> None:
        """Prefix caches: there are none to clear between requests here."""
        return None

    # -- gate ---------------------------------------------------------------------------------------

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict[str, Any]:
        """Close the gate, abort every request in flight and wait until each has returned."""
        self._gate_closed = True
        self._rejecting = bool(reject_request)
        self._reopened.clear()
        in_flight = list(self._requests.values())
        for request in in_flight:
            request.aborted = True
        await self._wait_done(in_flight, "aborted requests to return")
        self._record("abort", {"aborted": len(in_flight), "reject": self._rejecting})
        return {"aborted_count": len(in_flight), "request_ids": [r.request_id for r in in_flight]}

    async def resume_generation(self) -> None:
        """Reopen the gate: parked requests proceed, new ones are admitted."""
        self._gate_closed = False
        self._rejecting = False
        self._reopened.set()
        self._record("resume_generation", None)

    async def wait_for_requests_to_drain(self) -> None:
        await self._wait_done(list(self._requests.values()), "in-flight requests to finish")

    # -- generation ---------------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Any = None,
        video_data: Any = None,
        audio_data: Any = None,
        mm_processor_kwargs: Any = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> Any:
        """Token in, token out, as verl's servers do; returns verl's ``TokenOutput``."""
        from verl.workers.rollout.replica import TokenOutput

        if image_data is not None or video_data is not None or audio_data is not None:
            raise ValueError(f"replica {self.replica_rank}: the transformers CPU server is text only")
        prompt = [int(t) for t in prompt_ids]
        params = dict(sampling_params)
        max_tokens = self._max_tokens(prompt, params)
        temperature = float(params.get("temperature", self.config.temperature) or 0.0)
        want_logprobs = bool(params.get("logprobs", False))

        while self._gate_closed:
            if self._rejecting:
                self._rejected += 1
                return TokenOutput(
                    token_ids=[], stop_reason="aborted", extra_fields={"global_steps": self.global_steps}
                )
            await self._reopened.wait()
        self._check_ready()

        request = _Request(request_id)
        self._requests[request_id] = request
        tokens: list[int] = []
        logprobs: list[float] = []
        stop_reason = "completed"
        try:
            past = None
            inputs = torch.tensor([prompt], dtype=torch.long)
            while len(tokens) < max_tokens:
                if request.aborted:
                    stop_reason = "aborted"
                    break
                self._check_ready()
                with torch.no_grad():
                    out = self._model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                token, logprob = _pick(logits, temperature)
                tokens.append(token)
                if want_logprobs:
                    logprobs.append(logprob)
                self._generated += 1
                if token in self._eos:
                    break
                inputs = torch.tensor([[token]], dtype=torch.long)
                # Yield between tokens: aborts, sleeps and other requests interleave here.
                await asyncio.sleep(self.token_delay_s)
        finally:
            self._requests.pop(request_id, None)
            request.done.set()
        if stop_reason == "aborted":
            self._aborted += 1
        return TokenOutput(
            token_ids=tokens,
            log_probs=logprobs if want_logprobs else None,
            stop_reason=stop_reason,
            extra_fields={"global_steps": self.global_steps},
        )

    # -- reading ------------------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        """State and history, for tests and operators."""
        return {
            "replica_rank": self.replica_rank,
            "weights": self._weights,
            "kv_cache": self._kv_cache,
            "gate": "rejecting" if self._rejecting else ("closed" if self._gate_closed else "open"),
            "version": self.global_steps,
            "in_flight": len(self._requests),
            "generated_tokens": self._generated,
            "aborted_requests": self._aborted,
            "rejected_requests": self._rejected,
            "events": list(self._events),
        }

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

    # -- helpers ------------------------------------------------------------------------------------

    def _record(self, event: str, detail: Any) -> None:
        self._events.append((time.time(), event, detail))
        log.info("transformers_cpu replica %d: %s %s", self.replica_rank, event, detail if detail is not None else "")

    def _check_ready(self) -> None:
        if self._weights != VALID or not self._kv_cache:
            raise EngineAsleepError(
                f"replica {self.replica_rank}: generate needs valid weights and a KV cache "
                f"(weights {self._weights}, kv_cache {'allocated' if self._kv_cache else 'released'})"
            )

    def _max_tokens(self, prompt: list[int], params: dict[str, Any]) -> int:
        max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        room = int(max_model_len) - len(prompt)
        if room < 1:
            raise ValueError(
                f"replica {self.replica_rank}: prompt of {len(prompt)} tokens leaves no room within "
                f"max_model_len {max_model_len}"
            )
        requested = params.get("max_tokens", params.get("max_new_tokens"))
        if requested is None:
            requested = min(
                self.config.response_length, self.config.prompt_length + self.config.response_length - len(prompt)
            )
        return max(1, min(int(requested), room))

    def _tied(self, name: str, present: set[str]) -> bool:
        model = self._model
        if model is None or not getattr(model.config, "tie_word_embeddings", False):
            return False
        return name.endswith("lm_head.weight") and any(n.endswith("embed_tokens.weight") for n in present)

    def _release_weights(self) -> None:
        if self._model is not None:
            for param in self._model.parameters():
                param.data = torch.empty(0, dtype=param.dtype)
        self._weights = RELEASED

    def _allocate_weights(self) -> None:
        assert self._model is not None, "launch() first"
        shapes = {name: shape for name, (shape, _) in self._shapes.items()}
        for name, param in self._model.named_parameters():
            param.data = torch.empty(shapes[name], dtype=param.dtype)
        self._weights = INVALID

    async def _wait_done(self, requests: list[_Request], what: str) -> None:
        if not requests:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in requests)), DRAIN_TIMEOUT_S)
        except asyncio.TimeoutError:
            pending = [r.request_id for r in requests if not r.done.is_set()]
            raise TimeoutError(
                f"replica {self.replica_rank}: timed out after {DRAIN_TIMEOUT_S:.0f}s waiting for {what}: {pending[:5]}"
            ) from None


def _pick(logits: torch.Tensor, temperature: float) -> tuple[int, float]:
    """Next token and its log-probability under the sampling distribution."""
    if temperature <= 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logits))
    else:
        logprobs = torch.log_softmax(logits / temperature, dim=-1)
        token = int(torch.multinomial(logprobs.exp(), 1))
    return token, float(logprobs[token])


__all__ = ["DRAIN_TIMEOUT_S", "EngineAsleepError", "TransformersCpuServer"]
