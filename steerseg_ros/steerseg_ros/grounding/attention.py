"""Attention rollout at prefill, without ever materialising an L x L attention matrix.

Owns the capture of the post-RoPE queries and keys that a Qwen-VL model's decoder layers
l_s..last actually attend with during one prefill forward, and the rollout's last row computed
from them (METHOD.md section 1: V-Max head weighting, A' = 0.5 A + 0.5 I, R = A'_L ... A'_{l_s}).

Only the last row r = e_last^T A'_L A'_{L-1} ... A'_{l_s} is needed, so the rollout runs
backwards over the layers as a chain of vector-matrix products. Each layer's attention exists
only as row blocks of `block_rows` queries (fp32, causal keys only); the same pass gathers each
head's v A_h and the V-Max statistics. Peak extra memory is the stored queries and keys of the
captured layers (in the model's dtype) plus one row block of one batch item, instead of
(H, L, L) fp32 tensors per layer; the stored queries are the floor, since the chain reaches
layer l_s only after the forward has passed every later layer. All of it is plain torch under
autograd, so a loss on the row can be backpropagated to the input embeddings (soft prompts).

Also owns `reference_rollout`, the same formulas on full attention matrices in float64, which
the tests use as ground truth.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import weakref
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# The name under which the capturing attention function is registered with transformers. Only
# the captured layers' attention modules are pointed at it, and only inside `capture()`.
CAPTURE_IMPLEMENTATION = "steerseg_rollout_capture"

HEAD_WEIGHTINGS = ("vmax", "mean")


def default_layer_start(num_layers: int) -> int:
    """l_s for a decoder of `num_layers` layers: half the depth (METHOD.md: 14 of 28 for the 7B
    models, 18 of 36 for Qwen2.5-VL-3B)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    return num_layers // 2


@dataclass
class RolloutConfig:
    """How the rollout is computed (METHOD.md section 1)."""

    layer_start: int  # l_s: index of the first captured decoder layer (0-based)
    residual: float = 0.5  # A' = (1 - residual) * A + residual * I
    head_weighting: str = "vmax"  # "vmax" or "mean"
    block_rows: int = 256  # query rows per block when producing a layer's attention

    def __post_init__(self):
        if self.layer_start < 0:
            raise ValueError(f"layer_start must be >= 0, got {self.layer_start}")
        if not 0.0 <= self.residual <= 1.0:
            raise ValueError(f"residual must be in [0, 1], got {self.residual}")
        if self.head_weighting not in HEAD_WEIGHTINGS:
            raise ValueError(f"head_weighting must be one of {HEAD_WEIGHTINGS}, got {self.head_weighting!r}")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The text decoder layers of a Qwen-VL *ForConditionalGeneration, its inner *Model, or the
    text model itself."""
    module = model
    for _ in range(3):
        language_model = getattr(module, "language_model", None)
        if isinstance(language_model, torch.nn.Module) and hasattr(language_model, "layers"):
            return language_model.layers
        if hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return module.layers
        module = getattr(module, "model", None)
        if not isinstance(module, torch.nn.Module):
            break
    raise TypeError(f"cannot find the text decoder layers of {type(model).__name__}: expected a Qwen-VL "
                    "*ForConditionalGeneration, its inner model, or its text model")


def _visual_runs(visual_mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[start, end) of each run of visual positions, per batch item."""
    runs = []
    for row in visual_mask.to("cpu", torch.int8):
        edges = torch.diff(row, prepend=row.new_zeros(1), append=row.new_zeros(1))
        starts = torch.nonzero(edges == 1).flatten().tolist()
        ends = torch.nonzero(edges == -1).flatten().tolist()
        runs.append(list(zip(starts, ends)))
    return runs


def _attention_block(queries: torch.Tensor, keys: torch.Tensor, row_weights: Optional[torch.Tensor],
                     first_row: int, future: torch.Tensor, runs: Optional[list[tuple[int, int]]]):
    """One row block of one layer's attention, reduced on the spot.

    queries: (B, H, n, d) fp32, already multiplied by the attention's scaling, rows
    first_row..first_row+n-1; keys: (B, Hkv, j, d) fp32 with j = first_row + n (later keys are
    causally masked for every row of the block); future: (n, n) fp32, -inf above the diagonal,
    0 elsewhere: the causal mask of the block's diagonal square, the only one with future keys.
    Returns (row_weights @ A_h per head: (B, H, j) or None, sum over the block's rows of the max
    attention to visual keys per head: (B, H) or None).
    """
    batch, heads, rows, dim = queries.shape
    kv_heads, keys_len = keys.shape[1], keys.shape[2]
    groups = heads // kv_heads
    # GQA: head h uses kv head h // groups (transformers' repeat_kv), so fold the group into the
    # rows instead of repeating the keys.
    scores = torch.matmul(queries.reshape(batch, kv_heads, groups * rows, dim), keys.transpose(-1, -2))
    scores = scores.view(batch, heads, rows, keys_len)
    if torch.is_grad_enabled() and scores.requires_grad:
        scores = torch.cat([scores[..., :first_row], scores[..., first_row:] + future], dim=-1)
        probs = torch.softmax(scores, dim=-1)
        inverse_sums = None
    else:
        # Softmax in place, its division deferred to the (B, H, n) reductions below: one
        # block-sized buffer and two passes fewer over it.
        scores[..., first_row:] += future
        probs = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
        inverse_sums = probs.sum(dim=-1).reciprocal_()

    visual_max_sum = None
    if runs is not None:
        # Max over visual keys, one contiguous run at a time: slices are views, so no copy of the
        # block is made. Masked (future) keys hold probability 0, as in the full matrix.
        visual_max = probs.new_zeros(probs.shape[:-1])
        for start, end in runs:
            if start < keys_len:
                visual_max = torch.maximum(visual_max, probs[..., start:min(end, keys_len)].amax(dim=-1))
        if inverse_sums is not None:
            visual_max = visual_max * inverse_sums
        visual_max_sum = visual_max.sum(dim=-1)

    weighted = None
    if row_weights is not None:
        row_weights = row_weights[:, None, :].expand(batch, heads, rows)
        if inverse_sums is not None:
            row_weights = row_weights * inverse_sums
        weighted = torch.matmul(row_weights[:, :, None, :], probs).squeeze(-2)
    return weighted, visual_max_sum


def _layer_row(queries: torch.Tensor, keys: torch.Tensor, row: torch.Tensor, scaling: float,
               config: RolloutConfig, runs: Optional[list[tuple[int, int]]],
               row_support: Optional[int] = None) -> torch.Tensor:
    """row @ A'_l for one layer and one batch item, from its queries (1, H, L, d) and keys
    (1, Hkv, L, d); runs: the item's visual runs for V-Max, None for head means.

    row: (1, L) fp32. row_support: when only row[:, row_support:] is non-zero (the first step of
    the chain, e_last), blocks above it are visited only for the V-Max statistics.
    """
    batch, heads, length, _ = queries.shape
    keys = keys.float()
    per_head = row.new_zeros(batch, heads, length)
    visual_max_sum = row.new_zeros(batch, heads) if runs is not None else None
    first = 0
    if row_support is not None and runs is None:
        first = row_support  # head means need no other rows
    differentiable = torch.is_grad_enabled() and (queries.requires_grad or keys.requires_grad or row.requires_grad)
    future = torch.full((config.block_rows, config.block_rows), float("-inf"), device=queries.device).triu(1)
    for start in range(first, length, config.block_rows):
        end = min(start + config.block_rows, length)
        needs_row = row_support is None or end > row_support
        args = (queries[:, :, start:end].float() * scaling, keys[:, :, :end], row[:, start:end] if needs_row else None,
                start, future[:end - start, :end - start], runs)
        if differentiable:
            # Recompute the block in backward instead of keeping every block's probabilities.
            weighted, block_max = checkpoint(_attention_block, *args, use_reentrant=False)
        else:
            weighted, block_max = _attention_block(*args)
        if weighted is not None:
            per_head[:, :, :end] += weighted
        if block_max is not None:
            visual_max_sum = visual_max_sum + block_max

    if runs is not None:
        head_weights = visual_max_sum / length
        head_weights = head_weights / head_weights.amax(dim=-1, keepdim=True)
        mixed = (head_weights[:, :, None] * per_head).sum(dim=1) / heads
    else:
        mixed = per_head.mean(dim=1)
    return (1.0 - config.residual) * mixed + config.residual * row


class _CapturedLayer:
    """What one captured attention module recorded in the prefill."""

    def __init__(self, index: int, delegate, original_config):
        self.index = index
        self.delegate = delegate
        self.original_config = original_config
        self.recorded = False
        self.queries: Optional[torch.Tensor] = None
        self.keys: Optional[torch.Tensor] = None
        self.scaling: float = 1.0


# attention module -> (its rollout, its _CapturedLayer), for the modules being captured now.
_ACTIVE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[AttentionRollout, _CapturedLayer]]" = \
    weakref.WeakKeyDictionary()


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    """The attention function the captured layers run inside `capture()`: records the query and
    key the attention uses, then delegates to the model's own implementation unchanged."""
    rollout, layer = _ACTIVE[module]
    rollout._record(layer, module, query, key, attention_mask, kwargs)
    return layer.delegate(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capturing_attention)


def _check_causal_mask(mask, batch: int, length: int, block_rows: int = 256) -> None:
    """Raise unless the mask the attention receives is the plain causal mask (no padding, no
    packing): the rollout assumes it. Checked in row blocks so no L x L temporary is made."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention capture cannot check an attention mask of type {type(mask).__name__}; "
                         "load the model with attn_implementation 'sdpa' or 'eager'")
    if mask.dim() == 2:  # flash-attention style padding mask
        if not bool(mask.all()):
            raise ValueError("attention capture needs unpadded batches (every item the same length); "
                             "the attention mask has padding")
        return
    if mask.dim() != 4 or mask.shape[-2] != length or mask.shape[-1] != length:
        raise ValueError(f"attention capture got an attention mask of shape {tuple(mask.shape)} "
                         f"for a prefill of {length} positions")
    columns = torch.arange(length, device=mask.device)
    for start in range(0, length, block_rows):
        end = min(start + block_rows, length)
        block = mask[..., start:end, :]
        allowed = block if mask.dtype == torch.bool else block == 0
        causal = columns[None, :] <= torch.arange(start, end, device=mask.device)[:, None]
        if not bool((allowed == causal).all()):
            raise ValueError("attention capture needs a plain causal mask: the attention mask has padding "
                             "or packed sequences (batch items must have equal length, no padding)")


class AttentionRollout:
    """Captures decoder layers config.layer_start..last during one prefill and computes the
    rollout's last row from them.

        rollout = AttentionRollout(model, RolloutConfig(layer_start=default_layer_start(n)))
        with rollout.capture(visual_mask):
            model(**inputs)            # the prefill; later forwards in the block are not captured
        row = rollout.last_row()       # (B, L) float32

    The model's own attention output is unchanged: the captured layers delegate to the model's
    attention implementation (sdpa, eager, ...).
    """

    def __init__(self, model: torch.nn.Module, config: RolloutConfig):
        self.model = model
        self.config = config
        self.layers = decoder_layers(model)
        self.num_layers = len(self.layers)
        if config.layer_start >= self.num_layers:
            raise ValueError(f"layer_start {config.layer_start} is beyond the model's {self.num_layers} decoder layers")
        self._captured: list[_CapturedLayer] = []
        self._visual_mask: Optional[torch.Tensor] = None
        self._row: Optional[torch.Tensor] = None
        self._checked_mask = False

    @property
    def captured_layers(self) -> range:
        """Indices of the decoder layers whose attention enters the rollout."""
        return range(self.config.layer_start, self.num_layers)

    @contextlib.contextmanager
    def capture(self, visual_mask: torch.Tensor) -> Iterator["AttentionRollout"]:
        """Capture the first forward pass run inside the block (the prefill).

        visual_mask: (B, L) bool, True at visual-token positions (used by V-Max).
        """
        if not isinstance(visual_mask, torch.Tensor) or visual_mask.dim() != 2:
            raise ValueError("visual_mask must be a (batch, length) tensor")
        visual_mask = visual_mask.to(torch.bool)
        if self.config.head_weighting == "vmax" and not bool(visual_mask.any(dim=1).all()):
            raise ValueError("V-Max head weighting needs at least one visual token in every batch item")
        self._visual_mask = visual_mask
        self._row = None
        self._checked_mask = False
        self._captured = []
        patched = []
        try:
            for index in self.captured_layers:
                attention = self.layers[index].self_attn
                if attention in _ACTIVE:
                    raise RuntimeError(f"decoder layer {index} is already being captured")
                original = attention.config
                implementation = original._attn_implementation
                if implementation in (None, "eager"):
                    # The eager function of the model's own modeling file, as the module would use.
                    delegate = sys.modules[type(attention).__module__].eager_attention_forward
                else:
                    delegate = ALL_ATTENTION_FUNCTIONS[implementation]
                layer = _CapturedLayer(index, delegate, original)
                # A per-module shallow copy of the config points only this module at the capturing
                # function; the shared text config (and the masks built from it) stay untouched.
                redirected = copy.copy(original)
                redirected._attn_implementation_internal = CAPTURE_IMPLEMENTATION
                attention.config = redirected
                patched.append(attention)
                _ACTIVE[attention] = (self, layer)
                self._captured.append(layer)
            yield self
        finally:
            for attention in patched:
                _, layer = _ACTIVE.pop(attention)
                attention.config = layer.original_config

    def _record(self, layer: _CapturedLayer, module, query, key, attention_mask, kwargs) -> None:
        if layer.recorded or self._row is not None:
            return  # a later forward in the block (decoding): not captured
        batch, _, length, _ = query.shape
        if key.shape[2] != length:
            raise RuntimeError(f"attention capture expects the prefill (queries and keys over the same positions); "
                               f"layer {layer.index} got {length} queries for {key.shape[2]} keys: a decoding step, "
                               "a cached prefix or a static cache (use the default dynamic cache)")
        if (batch, length) != tuple(self._visual_mask.shape):
            raise ValueError(f"visual_mask has shape {tuple(self._visual_mask.shape)} but the captured forward "
                             f"has batch {batch} and length {length}")
        if kwargs.get("sliding_window") is not None:
            raise NotImplementedError(f"decoder layer {layer.index} uses sliding-window attention, which the rollout "
                                      "does not model")
        if not self._checked_mask:
            _check_causal_mask(attention_mask, batch, length)
            self._checked_mask = True
        scaling = kwargs.get("scaling")
        layer.scaling = float(scaling if scaling is not None else getattr(module, "scaling", query.shape[-1] ** -0.5))
        self._keep(layer, query, key)
        layer.recorded = True

    def _keep(self, layer: _CapturedLayer, query: torch.Tensor, key: torch.Tensor) -> None:
        # References, not copies: kept in the model's dtype and, under autograd, in its graph.
        layer.queries = query
        layer.keys = key

    def last_row(self) -> torch.Tensor:
        """(B, L) float32: the rollout's row for the last position over all positions."""
        if self._row is not None:
            return self._row
        if not self._captured or not all(layer.recorded for layer in self._captured):
            raise RuntimeError("no prefill forward was captured: run the model inside `capture()` first")
        first = self._captured[0].queries
        batch, _, length, _ = first.shape
        vmax = self.config.head_weighting == "vmax"
        runs = _visual_runs(self._visual_mask) if vmax else [None] * batch
        row = torch.zeros(batch, length, dtype=torch.float32, device=first.device)
        row[:, -1] = 1.0
        support: Optional[int] = length - 1
        # The rollout is specified in fp32; under autocast (the soft-prompt trainer's mixed
        # precision) its matmuls would otherwise run in bf16.
        with torch.autocast(first.device.type, enabled=False):
            for layer in reversed(self._captured):
                # One batch item at a time, so the row block's size does not grow with the batch.
                row = torch.cat([
                    _layer_row(layer.queries[item:item + 1], layer.keys[item:item + 1], row[item:item + 1],
                               layer.scaling, self.config, runs[item], row_support=support)
                    for item in range(batch)])
                support = None
                # Each layer is needed once: let its queries and keys go as soon as it is used.
                layer.queries = layer.keys = None
        self._row = row
        return row


def reference_rollout(attentions: Sequence[torch.Tensor], visual_mask: torch.Tensor,
                      config: RolloutConfig) -> torch.Tensor:
    """The rollout's last row in float64 from full attention probabilities, straight from the
    formulas of METHOD.md. attentions: the (B, H, L, L) probabilities of layers l_s..last, in
    order (e.g. `outputs.attentions[l_s:]` of an eager float64 forward). Returns (B, L) float64."""
    visual = visual_mask.to(torch.bool)
    rollout = None
    for attention in attentions:
        attention = attention.to(torch.float64)
        batch, heads, length, _ = attention.shape
        if config.head_weighting == "vmax":
            visual_max = torch.where(visual[:, None, None, :], attention, float("-inf")).amax(dim=-1)  # (B, H, L)
            head_weights = visual_max.mean(dim=-1)
            head_weights = head_weights / head_weights.amax(dim=-1, keepdim=True)
        else:
            head_weights = torch.ones(batch, heads, dtype=torch.float64, device=attention.device)
        layer = (head_weights[:, :, None, None] * attention).sum(dim=1) / heads
        eye = torch.eye(length, dtype=torch.float64, device=attention.device)
        layer = (1.0 - config.residual) * layer + config.residual * eye
        rollout = layer if rollout is None else layer @ rollout
    if rollout is None:
        raise ValueError("reference_rollout needs at least one layer's attention")
    return rollout[:, -1, :]
