"""THE decode loop, shared by every strategy: propose, verify, accept, commit, stop, stream.

Batch layout (why it looks like this: docs/design.md "Batching"). Rows accept different
numbers of drafts per step. Instead of re-packing caches per row, every row keeps the same
number of KV slots: after a step the target cache is cropped to the longest row's accepted
length and the slots other rows rejected are *masked* (``slot_mask`` = 0) rather than removed.
Position ids come from the mask's running sum, so each row sees exactly its own sequence.
The draft model's cache follows the same slot layout, so one mask serves both models.

State per call (never on the strategy object):
  ids (B, T)        left-padded prompt + committed tokens; row i valid up to lengths[i]
  slot_tokens/mask  token and validity of each target KV-cache slot
  pending (B,)      the last committed token: committed, but not yet in any cache
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from hfspec import acceptance
from hfspec.cache import cache_length, crop_to
from hfspec.engine_utils import forward, lm_head_width, position_ids
from hfspec.grammar.rows import GrammarRows
from hfspec.processors import PrefixProcessor
from hfspec.proposers.base import SessionContext, StepView, Strategy


@dataclass
class SpecStats:
    """Counters of one or more speculative calls; pass one as ``speculation_stats=`` to read them."""

    calls: int = 0
    target_forwards: int = 0  # verify forwards (the first one also reads the prompt)
    drafted: int = 0  # draft tokens sent to verification (summed over rows)
    accepted: int = 0  # of those, accepted
    emitted: int = 0  # tokens committed (summed over rows)
    row_steps: int = 0  # (row, verify step) pairs in which the row was still generating
    grammar_seconds: float = 0.0  # grammar work (grammar= calls): walking, filling and applying masks, committing
    masks_filled: int = 0  # grammar masks filled (target and draft positions)
    per_step_emitted: list[int] = field(default_factory=list, repr=False)

    def record(self, num_drafts, accepted, kept, active) -> None:
        """Add one verify step: per-row draft counts, accepted counts, committed counts (B,)."""
        self.target_forwards += 1
        self.drafted += int(num_drafts[active].sum())
        self.accepted += int(accepted[active].sum())
        self.emitted += int(kept.sum())
        self.row_steps += int(active.sum())
        self.per_step_emitted.append(int(kept.sum()))

    @property
    def tokens_per_step(self) -> float:
        """tau: committed tokens per target forward per row."""
        return self.emitted / max(self.row_steps, 1)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)


@dataclass
class SlotLayout:
    """The target KV-cache slots, shared by every row (module docstring: "Batch layout")."""

    tokens: torch.Tensor  # (B, S) token held by each slot (junk where masked)
    mask: torch.Tensor  # (B, S) 1 where the slot belongs to the row's sequence
    pending: torch.Tensor  # (B,) last committed token, in no cache yet

    @classmethod
    def for_prompt(cls, input_ids: torch.Tensor, mask: torch.Tensor) -> SlotLayout:
        """No separate prefill: the last prompt token is pending, the rest are slots not yet seen."""
        return cls(input_ids[:, :-1], mask[:, :-1], input_ids[:, -1])

    def verify_inputs(self, drafts: torch.Tensor, seen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, position_ids) to read unseen slots + pending + drafts."""
        step = torch.cat([self.pending[:, None], drafts], dim=1)
        mask = torch.cat([self.mask, torch.ones_like(step)], dim=1)
        return torch.cat([self.tokens[:, seen:], step], dim=1), mask, position_ids(mask)[:, seen:]

    def advance(self, drafts: torch.Tensor, accepted: torch.Tensor, next_token: torch.Tensor) -> int:
        """Keep pending + the longest row's accepted drafts as slots, masking what shorter rows
        rejected; ``next_token`` becomes pending. Returns the new number of slots."""
        longest = int(accepted.max()) if accepted.numel() else 0
        step = torch.cat([self.pending[:, None], drafts], dim=1)[:, : longest + 1]
        valid = (torch.arange(longest + 1)[None, :] <= accepted[:, None]).long().to(self.mask.device)
        self.tokens = torch.cat([self.tokens, step], dim=1)
        self.mask = torch.cat([self.mask, valid], dim=1)
        self.pending = next_token
        return self.mask.shape[1]


def accept(scores, drafts, num_drafts, draft_probs, do_sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The acceptance rule for this call: greedy on scores, or speculative sampling on softmax."""
    if not do_sample:
        return acceptance.greedy_accept(drafts, num_drafts, scores)
    q = draft_probs[:, : drafts.shape[1]].to(scores.device) if draft_probs is not None else None
    return acceptance.speculative_accept(drafts, num_drafts, q, torch.softmax(scores, dim=-1))


class _Committer:
    """Appends accepted tokens row by row, applies stopping criteria per token, streams."""

    def __init__(self, ids, lengths, stopping: StoppingCriteriaList, streamer, record_scores: bool):
        self.ids, self.lengths, self.stopping, self.streamer = ids, lengths, stopping, streamer
        self.finished = torch.zeros(ids.shape[0], dtype=torch.bool)
        self.scores: list[list[torch.Tensor]] | None = [[] for _ in range(ids.shape[0])] if record_scores else None

    def commit(self, tokens: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
        """Commit tokens[i, :counts[i]] for unfinished rows; returns how many each row kept (B,)."""
        kept = torch.zeros_like(counts)
        for row in range(tokens.shape[0]):
            if self.finished[row]:
                continue
            for j in range(int(counts[row])):
                length = int(self.lengths[row])
                if length >= self.ids.shape[1]:  # out of room: max_length reached without a criterion
                    self.finished[row] = True
                    break
                self.ids[row, length] = tokens[row, j]
                self.lengths[row] = length + 1
                kept[row] += 1
                if self.scores is not None:
                    self.scores[row].append(scores[row, j])
                if bool(self.stopping(self.ids[row : row + 1, : length + 1], None).any()):
                    self.finished[row] = True
                    break
        if self.streamer is not None and int(kept[0]) > 0:
            end = int(self.lengths[0])
            self.streamer.put(self.ids[0:1, end - int(kept[0]) : end].cpu())
        return kept

    def stacked_scores(self) -> tuple[torch.Tensor, ...] | None:
        """HF layout: one (B, V) tensor per generated position; finished rows get -inf."""
        if self.scores is None:
            return None
        steps = max(len(s) for s in self.scores)
        width = next(s[0] for s in self.scores if s).shape[-1]
        fill = torch.full((width,), float("-inf"))
        return tuple(
            torch.stack([s[t] if t < len(s) else fill for s in self.scores]) for t in range(steps)
        )


def speculative_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    generation_config: GenerationConfig,
    logits_processor: LogitsProcessorList | None,
    stopping_criteria: StoppingCriteriaList,
    strategy: Strategy,
    *,
    streamer=None,
    stats: SpecStats | None = None,
    grammar: GrammarRows | None = None,
    tokenizer=None,
) -> torch.Tensor | GenerateDecoderOnlyOutput:
    """Run lossless speculative decoding; inputs are already validated by ``hfspec.api``.

    With ``grammar`` every verified and drafted distribution is masked, drafts are cut at their
    first ungrammatical token (verification would reject it anyway) and the matchers advance by
    the committed tokens only.
    """
    stats = stats if stats is not None else SpecStats()
    stats.calls += 1
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    do_sample = bool(generation_config.do_sample)
    max_length = int(generation_config.max_length)
    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else 0
    mask = attention_mask.long() if attention_mask is not None else torch.ones_like(input_ids)
    processor = PrefixProcessor(logits_processor, grammar=grammar)
    want_scores = bool(generation_config.return_dict_in_generate and generation_config.output_scores)

    ids = torch.full((batch, max(max_length, prompt_len + 1)), pad_id, dtype=torch.long, device=device)
    ids[:, :prompt_len] = input_ids
    lengths = torch.full((batch,), prompt_len, dtype=torch.long)
    starts = mask.argmax(dim=-1).cpu()
    committer = _Committer(ids, lengths, stopping_criteria, streamer, want_scores)

    cache = DynamicCache(config=model.config)
    layout = SlotLayout.for_prompt(input_ids, mask)
    session = strategy.start(
        SessionContext(
            target=model,
            generation_config=generation_config,
            processor=processor,
            do_sample=do_sample,
            vocab_size=lm_head_width(model),
            batch_size=batch,
            grammar=grammar,
            tokenizer=tokenizer,
        )
    )
    while not bool(committer.finished.all()):
        active = ~committer.finished
        max_drafts = torch.where(active, (max_length - lengths - 1).clamp_min(0), torch.zeros_like(lengths))
        proposal = session.propose(
            StepView(ids, lengths, starts, layout.tokens, layout.mask, layout.pending, max_drafts)
        )
        num_drafts = torch.minimum(proposal.lengths.cpu(), max_drafts)
        if grammar is not None:
            num_drafts = torch.minimum(num_drafts, grammar.grammatical_prefix(proposal.ids, num_drafts))
        drafts = proposal.ids[:, : int(num_drafts.max()) if batch else 0].to(device)
        k = drafts.shape[1]

        tokens, verify_mask, positions = layout.verify_inputs(drafts, seen=cache_length(cache))
        scores = processor(ids, lengths, drafts, forward(model, tokens, verify_mask, positions, cache, keep=k + 1))
        n_acc, next_token = accept(scores, drafts, num_drafts, proposal.probs, do_sample)

        emitted = torch.cat([drafts, next_token[:, None]], dim=1).scatter(1, n_acc[:, None], next_token[:, None])
        n_acc = n_acc.cpu()
        kept = committer.commit(emitted, n_acc + 1, scores)
        if grammar is not None:
            grammar.commit(emitted, kept)
        stats.record(num_drafts, n_acc, kept, active)

        kept_slots = layout.advance(drafts, torch.where(active, n_acc, torch.zeros_like(n_acc)), next_token)
        crop_to(cache, kept_slots)
        session.on_commit(kept_slots)

    if grammar is not None:
        stats.grammar_seconds += grammar.seconds
        stats.masks_filled += grammar.masks_filled
    if streamer is not None:
        streamer.end()
    sequences = ids[:, : int(lengths.max())]
    if not generation_config.return_dict_in_generate:
        return sequences
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=committer.stacked_scores())
