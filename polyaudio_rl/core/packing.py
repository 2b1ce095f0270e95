"""Shared-prompt packing: the completions of one prompt in a micro-batch run as one row, the prompt once.

A GRPO micro-batch holds G completions of the same multi-audio prompt, and the prompt is most of each sequence
(up to 5 clips × 750 audio positions for the 7B model against a few hundred answer tokens; ~190 of ~210 positions
for the tiny one). Run as G separate rows, every layer computes the prompt G times. Packed, a row is

    [ prompt (P) | completion 1 (C1) | completion 2 (C2) | ... ]

with position ids 0..P-1 for the prompt and P..P+Ck-1 again for each completion, and a block mask: the prompt is
causal, each completion sees the whole prompt and its own earlier tokens, never another completion. Every
completion token then has exactly the inputs it has in its own row (same embeddings, same positions, same keys and
values), so its log-prob is the same to float rounding, and the backward pass sums each completion's gradient
through the shared prompt positions, as the separate rows do. Positions after a row's end attend to themselves
only (a finite, unused output: never a fully masked row).

The logits that score completion token j of a row come from the prompt's last position (j = 0) or from that
completion's token j-1 (:attr:`Packing.src`), gathered before the output projection, so the vocabulary projection
runs on scored positions only.

The mask is an additive 4D mask, which transformers passes to SDPA (and eager) attention as given; the forward is
the model's own (one call: ZeRO-3 hooks, gradient checkpointing and PEFT adapters behave as for any batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

PROMPT, PAD = 0, -1  # segment ids: the prompt, padding after a row's end; completions are 1, 2, ...


@dataclass
class Packing:
    """How a micro-batch's items (rows b of the unpacked [B, T] layout) sit in the packed rows [R, L]."""

    ids: torch.Tensor  # [R, L] model input ids (pad id at padding and at completion audio special tokens)
    true_ids: torch.Tensor | None  # [R, L] the true ids where a completion holds an audio special token
    position_ids: torch.Tensor  # [R, L]
    segments: torch.Tensor  # [R, L] PROMPT, PAD, or k >= 1 for the row's k-th completion
    src: torch.Tensor  # [N] flat index r * L + l of the position whose logits score each scored target (mask order)
    prompt_of_row: list[int]  # the unique prompt (index into the micro-batch's prompt list) of each packed row
    prompt_len: list[int]  # [R]

    def attention_mask(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """[R, 1, L, L] additive mask: 0 where query l may attend key m, the dtype's minimum elsewhere."""
        seg = self.segments.to(device)
        q, k = seg[:, :, None], seg[:, None, :]
        n = seg.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        allowed = causal & (((k == PROMPT) & (q != PAD)) | ((k == q) & (q > PROMPT)))
        allowed |= torch.eye(n, dtype=torch.bool, device=device)  # padding sees itself: no fully masked row
        out = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return out.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)

    def to(self, device: torch.device | str) -> "Packing":
        return Packing(self.ids.to(device), self.true_ids.to(device) if self.true_ids is not None else None,
                       self.position_ids.to(device), self.segments.to(device), self.src.to(device),
                       self.prompt_of_row, self.prompt_len)


def pack(prompt_ids: Sequence[torch.Tensor], prompt_of_item: Sequence[int], completions: Sequence[Sequence[int]],
         scored: Sequence[bool], pad_id: int, special_ids: Sequence[int] = ()) -> Packing:
    """Pack items (``completions[b]`` of prompt ``prompt_of_item[b]``, whose ids are ``prompt_ids[u]``) into one row
    per distinct prompt, rows in order of each prompt's first item. ``scored[b]`` is False for a filler item: it is
    packed (the same shapes on every rank) but no target of it is gathered — as its mask is 0 in the unpacked layout.
    Completion tokens in ``special_ids`` get ``pad_id`` in ``ids`` and keep their true id in ``true_ids``."""
    rows: list[int] = []  # prompt index of each row
    row_of_prompt: dict[int, int] = {}
    for u in prompt_of_item:
        if u not in row_of_prompt:
            row_of_prompt[u] = len(rows)
            rows.append(u)
    members: list[list[int]] = [[] for _ in rows]
    for b, u in enumerate(prompt_of_item):
        members[row_of_prompt[u]].append(b)
    lengths = [len(prompt_ids[u]) + sum(len(completions[b]) for b in members[r]) for r, u in enumerate(rows)]
    n_rows, width = len(rows), max(lengths)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    seg = torch.full((n_rows, width), PAD, dtype=torch.long)
    start_of: dict[int, int] = {}  # item -> packed position of its first completion token
    for r, u in enumerate(rows):
        p = len(prompt_ids[u])
        ids[r, :p] = prompt_ids[u]
        pos[r, :p] = torch.arange(p)
        seg[r, :p] = PROMPT
        at = p
        for k, b in enumerate(members[r], start=1):
            c = len(completions[b])
            ids[r, at : at + c] = torch.as_tensor(list(completions[b]), dtype=torch.long)
            pos[r, at : at + c] = torch.arange(p, p + c)
            seg[r, at : at + c] = k
            start_of[b] = at
            at += c
    src: list[int] = []
    for b, u in enumerate(prompt_of_item):  # the unpacked mask's order: item by item, token by token
        if not scored[b]:
            continue
        r, p, at = row_of_prompt[u], len(prompt_ids[u]), start_of[b]
        src.extend(r * width + (p - 1 if j == 0 else at + j - 1) for j in range(len(completions[b])))
    true_ids = None
    if len(special_ids):
        hit = (seg > PROMPT) & torch.isin(ids, torch.as_tensor(list(special_ids), dtype=torch.long))
        if hit.any():
            true_ids = ids.clone()
            ids = ids.masked_fill(hit, pad_id)
    return Packing(ids, true_ids, pos, seg, torch.as_tensor(src, dtype=torch.long), rows,
                   [len(prompt_ids[u]) for u in rows])


def packed_inputs(model_core: Any, packing: Packing, prompt_embeds: Sequence[torch.Tensor] | None,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The language-model inputs of the packed rows when the prompts' merged embeddings are given (the frozen
    encoder's cache): each row's prompt embeddings, then its completions' token embeddings (true ids)."""
    ids = packing.ids if packing.true_ids is None else packing.true_ids
    emb = model_core.get_input_embeddings()(ids)
    rows = [torch.cat([prompt_embeds[u].to(emb.dtype), emb[r, p:]])
            for r, (u, p) in enumerate(zip(packing.prompt_of_row, packing.prompt_len))]
    inputs_embeds = torch.stack(rows)
    if torch.is_grad_enabled() and not inputs_embeds.requires_grad:  # reentrant grad checkpointing needs one
        inputs_embeds.requires_grad_(True)
    return {"inputs_embeds": inputs_embeds, "attention_mask": packing.attention_mask(dtype, inputs_embeds.device),
            "position_ids": packing.position_ids}
