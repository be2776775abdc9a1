"""THE decode loop, shared by every strategy: propose, verify, accept, commit, stop, stream.

Batch layout (why it looks like this: docs/design.md "Batching"). Rows accept different
numbers of drafts per step. Instead of re-packing caches per row, every row keeps the same
number of KV slots: after a step the target cache is cropped to the longest row's accepted
length and the slots other rows rejected are *masked* (``slot_mask`` = 0) rather than removed.
Position ids come from the mask's running sum, so each row sees exactly its own sequence.
The draft model's cache follows the same slot layout, so one mask serves both models.
A row that stopped idles, or is fed on as HF feeds it (real tokens, or pads whose scores HF
records) until every row has stopped; the Committer decides which (``after_stop_policy``).

State per call (never on the strategy object):
  ids (B, T)        left-padded prompt + committed tokens; row i valid up to lengths[i]
  slot_tokens/mask  token and validity of each target KV-cache slot
  pending (B,)      the last committed token: committed, but not yet in any cache
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from hfspec import acceptance
from hfspec.committer import Committer, after_stop_policy
from hfspec.engine_utils import lm_head_width
from hfspec.grammar.rows import GrammarRows
from hfspec.masks import check_attention
from hfspec.processors import PrefixProcessor
from hfspec.proposers.base import SessionContext, StepView, Strategy
from hfspec.runner import ModelRunner, eager_runner
from hfspec.step import SoftmaxTarget, StepResult, TargetView, VerifyBatch, VerifyTarget, build_verify_batch
from hfspec.tree import chain_parents, is_chain, path_tokens


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

    @property
    def num_slots(self) -> int:
        return self.tokens.shape[1]

    def advance(self, result: StepResult) -> int:
        """Append the committed path's slots (pending + accepted drafts, holes where a row accepted
        fewer than the longest row); ``next_token`` becomes pending. Returns the new number of slots."""
        m = result.path.shape[1]
        step = torch.cat([self.pending[:, None], result.emitted[:, : m - 1]], dim=1)
        valid = (torch.arange(m)[None, :] <= result.num_accepted[:, None].cpu()).long().to(self.mask.device)
        self.tokens = torch.cat([self.tokens, step.to(self.tokens.device)], dim=1)
        self.mask = torch.cat([self.mask, valid], dim=1)
        self.pending = result.next_token.to(self.pending.device)
        return self.num_slots


def accept(
    scores, batch: VerifyBatch, draft_probs, do_sample: bool, target: Callable[[torch.Tensor], torch.Tensor]
) -> StepResult:
    """The acceptance rule for this call over the verified tree (chains use the chain rules);
    ``target`` maps the processed scores to the distribution drafts are verified against."""
    tokens, parents, num_nodes = batch.node_tokens, batch.parents, batch.num_nodes
    b, n = tokens.shape
    q = None
    if do_sample and draft_probs is not None:
        q = draft_probs[:, :n].to(scores.device)
        if q.shape[1] < n:  # padding nodes: never decisive (acceptance stops at num_nodes)
            q = torch.cat([q, q.new_zeros((b, n - q.shape[1], q.shape[2]))], dim=1)
    if is_chain(parents):
        if not do_sample:
            n_acc, next_token = acceptance.greedy_accept(tokens, num_nodes, scores)
        else:
            n_acc, next_token = acceptance.speculative_accept(tokens, num_nodes, q, target(scores))
        longest = int(n_acc.max()) if b else 0
        path = torch.arange(longest + 1, device=tokens.device).expand(b, longest + 1)
    else:
        from hfspec import tree_acceptance

        if not do_sample:
            walk = tree_acceptance.greedy_tree_accept(tokens, parents, num_nodes, scores)
        else:
            walk = tree_acceptance.stochastic_tree_accept(tokens, parents, num_nodes, q, target(scores))
        n_acc, next_token = walk.num_accepted, walk.next_token
        longest = int(n_acc.max()) if b else 0
        nodes = walk.path[:, :longest].clamp_min(0)
        root = torch.zeros((b, 1), dtype=nodes.dtype, device=nodes.device)  # not nodes[:, :1]: empty when longest = 0
        path = torch.cat([root, nodes + 1], dim=1)
    drafted = tokens.gather(1, (path[:, 1:] - 1).clamp_min(0))
    emitted = torch.cat([drafted, next_token[:, None]], dim=1).scatter(1, n_acc[:, None], next_token[:, None])
    return StepResult(
        path=path,
        num_accepted=n_acc,
        next_token=next_token,
        emitted=emitted,
        kept=torch.zeros_like(n_acc),
        kept_slots=0,
        log_weight=torch.zeros(b, dtype=scores.dtype, device=scores.device),
    )


def draft_processor(processor: PrefixProcessor, verify_target: VerifyTarget) -> PrefixProcessor:
    """The processor proposers see: the target's, plus the verify target's ``draft_reweight`` if it
    has one (aligned targets move the draft's q towards their own law; q stays what drafts are drawn from)."""
    reweight = getattr(verify_target, "draft_reweight", None)
    if reweight is None:
        return processor
    return PrefixProcessor(processor.processors, grammar=processor.grammar, mask_last=processor.mask_last,
                           reweight=reweight)


def pad_drafts(ids, parents, num_nodes, forced, others, room, pad_id: int):
    """Replace the proposal of ``forced`` rows (stopped rows whose scores HF still records) by a
    chain of pad tokens: as many as the widest of the ``others`` (rows still drafting) drafts, so
    they never widen the verify batch, or their whole room once no other row drafts; never more
    than ``room`` (their max_drafts, so the node budget of compiled plans holds).
    Returns (ids, parents, num_nodes)."""
    pads = room.minimum(num_nodes[others].max()) if bool(others.any()) else room
    pads = torch.where(forced, pads, num_nodes)
    b, k = ids.shape
    width = max(k, int(pads.max()))
    out = ids.new_full((b, width), pad_id)
    out[:, :k] = ids
    rows = forced.to(ids.device)
    out[rows] = pad_id
    if parents is not None:
        chain = (torch.arange(width, device=parents.device) - 1).expand(b, width).clone()
        chain[:, :k] = parents
        chain[rows.to(parents.device)] = torch.arange(width, device=parents.device) - 1
        parents = chain
    return out, parents, pads


def force_pads(result: StepResult, forced: torch.Tensor, num_nodes: torch.Tensor, pad_id: int) -> StepResult:
    """``forced`` rows commit all their pad drafts and a pad next token (num_accepted = their node
    count): the scores recorded along this path are HF's for the row followed by pads."""
    b, m = result.path.shape
    counts = num_nodes.to(result.path.device)
    rows = forced.to(result.path.device)
    width = max(m, int(counts[rows].max()) + 1)
    chain = torch.arange(width, device=result.path.device).expand(b, width)
    path = chain.clone()
    path[:, :m] = result.path
    path[rows] = chain[rows]
    emitted = result.emitted.new_full((b, width), pad_id)
    emitted[:, :m] = result.emitted
    emitted[rows] = pad_id
    result.path, result.emitted = path, emitted
    n_acc = result.num_accepted
    result.num_accepted = torch.where(rows.to(n_acc.device), num_nodes.to(n_acc.device), n_acc)
    result.next_token = torch.where(rows.to(result.next_token.device), pad_id, result.next_token)
    return result


def process_tree(processor: PrefixProcessor, ids, lengths, batch: VerifyBatch, logits) -> torch.Tensor:
    """Processed scores (B, N+1, V) where each column's prefix is the committed ids + its path
    (grammar masks at every node's own state; ``PrefixProcessor.at_paths``)."""
    columns = range(logits.shape[1])
    paths = [path_tokens(batch.node_tokens, batch.parents, batch.num_nodes, column) for column in columns]
    return processor.at_paths(ids, lengths, paths, logits)


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
    runner: ModelRunner | None = None,
    verify_target: VerifyTarget | None = None,
) -> torch.Tensor | GenerateDecoderOnlyOutput:
    """Run lossless speculative decoding; inputs are already validated by ``hfspec.api``.

    With ``grammar`` every verified and drafted distribution is masked, drafts are cut at their
    first ungrammatical token (verification would reject it anyway) and the matchers advance by
    the committed tokens only. ``runner`` runs the target's forwards (default: eager over a
    dynamic cache; ``hfspec.compile`` plans bring a compiled one over a static cache).
    ``verify_target`` gives the distribution drafts are verified against (default: softmax of the
    processed, masked scores) and the per-row log-weight of each commit (``StepResult.log_weight``).
    """
    verify_target = verify_target if verify_target is not None else SoftmaxTarget()
    check_attention(model)
    stats = stats if stats is not None else SpecStats()
    stats.calls += 1
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    do_sample = bool(generation_config.do_sample)
    max_length = int(generation_config.max_length)
    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else 0
    mask = attention_mask.long() if attention_mask is not None else torch.ones_like(input_ids)
    processor = PrefixProcessor(logits_processor, grammar=grammar, mask_last=verify_target.mask_last)
    want_scores = bool(generation_config.return_dict_in_generate and generation_config.output_scores)

    ids = torch.full((batch, max(max_length, prompt_len + 1)), pad_id, dtype=torch.long, device=device)
    ids[:, :prompt_len] = input_ids
    lengths = torch.full((batch,), prompt_len, dtype=torch.long)
    starts = mask.argmax(dim=-1).cpu()
    after_stop = after_stop_policy(stopping_criteria, want_scores)
    committer = Committer(ids, lengths, stopping_criteria, streamer, want_scores, after_stop)

    runner = runner if runner is not None else eager_runner(model, batch)
    layout = SlotLayout.for_prompt(input_ids, mask)
    session = strategy.start(
        SessionContext(
            target=model,
            generation_config=generation_config,
            processor=draft_processor(processor, verify_target),
            do_sample=do_sample,
            vocab_size=lm_head_width(model),
            batch_size=batch,
            grammar=grammar,
            tokenizer=tokenizer,
        )
    )
    budget = runner.node_budget
    top_k = int(getattr(session, "target_top_k", 0) or 0)  # sessions that learn from verification ask for it
    while bool((working := committer.working()).any()):
        live = ~committer.finished  # rows whose stop is still ahead (stats, grammar, streaming)
        forced = committer.forced()  # stopped rows fed pads (committer.after_stop_policy)
        room = (committer.limit - lengths - 1).clamp_min(0)
        if budget is not None:
            room = room.clamp_max(budget)
        max_drafts = torch.where(working & ~forced, room, torch.zeros_like(lengths))
        proposal = session.propose(
            StepView(ids, lengths, starts, layout.tokens, layout.mask, layout.pending, max_drafts)
        )
        num_nodes = torch.minimum(proposal.lengths.cpu(), max_drafts)
        proposed, parents = proposal.ids, proposal.parents
        if grammar is not None and (parents is None or is_chain(parents)):  # trees: verification rejects
            num_nodes = torch.minimum(num_nodes, grammar.grammatical_prefix(proposed, num_nodes))
        if bool(forced.any()):
            drafting = working & ~forced
            proposed, parents, num_nodes = pad_drafts(proposed, parents, num_nodes, forced, drafting, room, pad_id)
        width = int(num_nodes.max()) if batch else 0
        if parents is not None and not is_chain(parents[:, :width]):
            width = proposed.shape[1]  # a tree keeps its node order; padding nodes are ignored
        node_tokens = proposed[:, :width].to(device)
        parents = parents[:, :width].to(device) if parents is not None else chain_parents(batch, width, device)

        verify = build_verify_batch(
            layout.tokens, layout.mask, runner.store.length, layout.pending, node_tokens, parents, num_nodes, budget
        )
        logits = runner.verify(verify)
        if is_chain(verify.parents):
            scores = processor(ids, lengths, verify.node_tokens, logits)
        else:
            scores = process_tree(processor, ids, lengths, verify, logits)
        view = TargetView(ids, lengths, verify, processor.unmasked, processor.log_allowed)  # None unless mask_last

        def target(processed, view=view):
            return verify_target.probs(processed, view)

        if bool(forced.any()):  # pads are not judged: they are committed as they are
            judged = replace(verify, num_nodes=torch.where(forced.to(device), 0, verify.num_nodes))
            result = accept(scores, judged, proposal.probs, do_sample, target)
            result = force_pads(result, forced, num_nodes, pad_id)
        else:
            result = accept(scores, verify, proposal.probs, do_sample, target)

        n_acc = result.num_accepted.cpu()
        committed = committer.commit(result.emitted, n_acc + 1, scores.gather(
            1, result.path.to(scores.device)[..., None].expand(-1, -1, scores.shape[-1])
        ) if want_scores else None)
        result.kept = committed.kept
        result.log_weight = verify_target.commit(result, committed.own)
        if top_k:  # the target's top tokens at every verified column (processed, masked scores)
            result.target_top = scores.topk(min(top_k, scores.shape[-1]), dim=-1).indices
        if grammar is not None:
            grammar.commit(result.emitted, committed.own)  # never after-stop tokens (pads)
        stats.record(num_nodes, n_acc, committed.own, live)

        # the layout keeps exactly what was committed: a row cut by its stop (or L*) ends at its
        # last kept token, so a row fed on after its stop continues from its true sequence
        last = (committed.kept - 1).clamp_min(0)
        ends = result.emitted.gather(1, last.to(result.emitted.device)[:, None]).squeeze(1)
        result.next_token = torch.where(committed.kept.to(ends.device) > 0, ends, result.next_token)
        result.num_accepted = last
        base = layout.num_slots
        result.kept_slots = layout.advance(result)
        slot_valid = layout.mask[:, base:].bool()
        runner.store.keep(base, result.path[:, : result.kept_slots - base], slot_valid)
        session.on_commit(result)

    if grammar is not None:
        stats.grammar_seconds += grammar.seconds
        stats.masks_filled += grammar.masks_filled
    if streamer is not None:
        streamer.end()
    sequences = ids[:, : committer.output_length()]
    if not generation_config.return_dict_in_generate:
        return sequences
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=committer.stacked_scores())
