"""A decode loop over transformers' static KV cache, optionally compiled with ``torch.compile``
(CUDA graphs on a GPU): what :func:`rlhf.generation.generate` uses instead of ``model.generate``
when ``generation.decoder`` is ``static`` or ``compiled``.

A :class:`StaticDecoder` belongs to one model and one (batch, cache length) shape. The cache
(``transformers.StaticCache``) and the attention mask have that fixed shape, so every decode step
has the same shapes and compiles once; prompts of any width up to the cache are prefilled eagerly
into its first columns. Per token nothing is read back to the host: the next token, its
log-probability and each row's ``done`` flag stay on the device; whether every row has ended is
read once every ``check_every`` tokens. The weights are read where they are at each call, so the
compiled step keeps serving a model that trains between calls (the optimizer updates in place).

On CPU the decoder runs attention as plain matmuls and softmax (transformers' ``eager``) while it
decodes: the CPU kernel behind ``sdpa`` (``_scaled_dot_product_flash_attention_for_cpu``) took
0.76 ms per call for one query row against a 128-position cache (8 rows, 6 heads), 38 % of a
compiled decode step of the benchmark's actor; the matmul path fuses into the compiled step.

Token choice is transformers' (greedy: the arg-max; sampling: temperature, top-k, top-p as its
warpers do, :func:`rlhf.losses.warp_logits`) and the log-probability returned is the unwarped one
(temperature 1) of the chosen token, as :func:`rlhf.generation.generate` documents.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from rlhf import losses

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class CausalLM(Protocol):
    """What decoding uses of a model: a transformers causal LM (a ``PreTrainedModel`` with
    ``GenerationMixin``; in transformers 5 the base class has no ``generate``), or a ``PeftModel``
    wrapping one, which forwards these to it."""

    @property
    def config(self) -> PretrainedConfig: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Choice:
    """How the next token is chosen (the decoding options the compiled step specialises on)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def choose(logits: torch.Tensor, choice: Choice) -> tuple[torch.Tensor, torch.Tensor]:
    """(next token, its unwarped log-probability) per row of float32 ``logits`` [B, V].

    Sampling draws from the warped distribution by the exponential race (``argmax p / E`` with
    ``E ~ Exp(1)``: token i wins with probability ``p_i``), which needs no host round trip and
    compiles, unlike ``torch.multinomial``."""
    logp = F.log_softmax(logits, dim=-1)
    if choice.do_sample:
        probs = losses.warp_logits(logits, choice.temperature, choice.top_k, choice.top_p).softmax(dim=-1)
        token = (probs / torch.empty_like(probs).exponential_(1.0)).argmax(dim=-1)
    else:
        token = logits.argmax(dim=-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


@contextlib.contextmanager
def attention(model: CausalLM, implementation: str | None) -> Iterator[None]:
    """Run ``model`` with another attention implementation inside the block (None: unchanged)."""
    config = model.config
    before = config._attn_implementation
    if implementation is None or implementation == before:
        yield
        return
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before


class StaticDecoder:
    """Greedy or sampled decoding of ``model`` over a static KV cache of ``batch_size`` rows and
    ``max_len`` positions; ``compile`` puts each decode step through ``torch.compile``
    (``reduce-overhead``, i.e. CUDA graphs, on CUDA)."""

    def __init__(
        self,
        model: CausalLM,
        batch_size: int,
        max_len: int,
        device: torch.device,
        *,
        compile: bool,
        check_every: int = 8,
    ):
        from transformers import StaticCache

        self.model, self.batch_size, self.max_len, self.device = model, batch_size, max_len, device
        self.check_every = check_every
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.mask = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.attention = "eager" if device.type == "cpu" else None
        self.cuda_graphs = compile and device.type == "cuda"
        self.compiled = compile
        if compile:
            torch._dynamo.mark_static_address(self.mask)
            mode = "reduce-overhead" if self.cuda_graphs else None
            self._decode = torch.compile(self._step, mode=mode, dynamic=False, fullgraph=False)
        else:
            self._decode = self._step

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # ``forward``, not ``__call__``: a DeepSpeed engine hooks its module's own call (timers, and
        # ZeRO-3's parameter discovery, which never runs here) and the timers break compiled graphs.
        out = self.model.forward(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def _step(
        self,
        token: torch.Tensor,
        position: torch.Tensor,
        column: torch.Tensor,
        done: torch.Tensor,
        choice: Choice,
        eos_id: int,
        pad_id: int,
    ):
        """One token for every row: the step that compiles. Rows already done get ``pad_id``."""
        self.mask.index_fill_(1, column, 1)
        logits = self._forward(token[:, None], position[:, None])
        nxt, logp = choose(logits, choice)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        logp = torch.where(done, torch.zeros_like(logp), logp)
        done = done | (nxt == eos_id) | (nxt == pad_id)
        return nxt, logp, position + 1, column + 1, done

    @torch.no_grad()
    def __call__(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        max_new_tokens: int,
        choice: Choice,
        eos_id: int,
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer left-padded prompts ``ids``/``mask`` [b <= batch_size, P]: (new tokens, their
        log-probabilities), each [b, n] with n <= ``max_new_tokens`` (fewer when every row ended
        sooner; a row that ended is padded with ``pad_id`` and log-probability 0)."""
        rows, width = ids.shape
        if rows > self.batch_size or width + max_new_tokens > self.max_len:
            raise ValueError(
                f"{rows} x ({width} + {max_new_tokens}) does not fit the decoder's "
                f"{self.batch_size} x {self.max_len}"
            )
        if rows < self.batch_size:  # fill the fixed batch with copies of row 0 (dropped at the end)
            fill = self.batch_size - rows
            ids = torch.cat([ids, ids[:1].expand(fill, -1)])
            mask = torch.cat([mask, mask[:1].expand(fill, -1)])
        tokens, logps = self._decode_all(
            ids.to(self.device), mask.to(self.device), max_new_tokens, choice, eos_id, pad_id
        )
        return torch.stack(tokens, dim=1)[:rows], torch.stack(logps, dim=1)[:rows]

    def _decode_all(self, ids, mask, max_new_tokens, choice, eos_id, pad_id):
        width = ids.size(1)
        self.cache.reset()
        self.mask.zero_()
        self.mask[:, :width] = mask
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        token, logp = choose(self._forward(ids, positions), choice)  # prefill: eager, any width
        done = (token == eos_id) | (token == pad_id)
        tokens, logps = [token], [logp]
        position, column = positions[:, -1] + 1, torch.tensor([width], device=self.device)
        with attention(self.model, self.attention):
            for step in range(1, max_new_tokens):
                if step % self.check_every == 0 and bool(
                    done.all()
                ):  # the only host read, every check_every tokens
                    break
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                token, logp, position, column, done = self._decode(
                    token, position, column, done, choice, eos_id, pad_id
                )
                if self.cuda_graphs:  # outputs live in the graph's memory until its next replay
                    token, logp, position, column, done = (
                        t.clone() for t in (token, logp, position, column, done)
                    )
                tokens.append(token)
                logps.append(logp)
        return tokens, logps


_DECODERS: weakref.WeakKeyDictionary[CausalLM, StaticDecoder] = weakref.WeakKeyDictionary()


def decoder_for(
    model: CausalLM, rows: int, length: int, device: torch.device, *, compile: bool
) -> StaticDecoder:
    """The model's decoder, reused while the batch and the length fit it (a new shape compiles anew)."""
    current = _DECODERS.get(model)
    if (
        current is not None
        and current.compiled == compile
        and current.device == device
        and rows <= current.batch_size
        and length <= current.max_len
    ):
        return current
    if current is not None:
        rows, length = max(rows, current.batch_size), max(length, current.max_len)
    _DECODERS[model] = StaticDecoder(model, rows, length, device, compile=compile)
    return _DECODERS[model]
