"""One generate() call with ``grammar=hfspec.GrammarAligned(...)``: rounds of the one decode loop.

Each round runs the engine on the rows still owed a sample, with the aligned verifier target
(``AlignedTarget``) and fresh grammar matchers. A row's sample is returned when it completed the
grammar, passed validation and (exact method) its acceptance draw; any other row is drawn again
in the next round, from a trie that now knows more. Rows that share a prompt share a trie.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from hfspec.engine import SpecStats, speculative_generate
from hfspec.exceptions import AlignmentError
from hfspec.grammar.aligned.spec import AlignedStats, GrammarAligned, sampling_fingerprint
from hfspec.grammar.aligned.target import AlignedTarget
from hfspec.grammar.call import GrammarCall
from hfspec.grammar.compile import compile_spec
from hfspec.grammar.rows import GrammarRows
from hfspec.stopping import until_stop


class RejectedRows(StoppingCriteria):
    """Stops rows the aligned target has already rejected (their sample is drawn again)."""

    def __init__(self, target: AlignedTarget) -> None:
        self.target = target

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return self.target.rejected.to(input_ids.device)


def generate_aligned(
    aligned: GrammarAligned,
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    generation_config,
    logits_processor,
    stopping_criteria: StoppingCriteriaList,
    strategy,
    *,
    call: GrammarCall,
    vocab_size: int,
    stats: SpecStats | None = None,
) -> torch.Tensor:
    """(B, T) sequences, every row an accepted aligned sample (right-padded with the pad id)."""
    batch, prompt_len = input_ids.shape
    budget = int(generation_config.max_length) - prompt_len
    mask = attention_mask.long() if attention_mask is not None else torch.ones_like(input_ids)
    starts = mask.argmax(dim=-1).tolist()
    sampling = sampling_fingerprint(logits_processor)
    keys = [(tuple(input_ids[r, starts[r]:].tolist()), budget, sampling) for r in range(batch)]
    compiled = compile_spec(call.spec, call.tokenizer, vocab_size)
    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else 0
    spec_stats = stats if stats is not None else SpecStats()
    this_call = AlignedStats()
    results: list[torch.Tensor | None] = [None] * batch
    todo = list(range(batch))
    for _ in range(aligned.max_rounds):
        rows = GrammarRows(compiled, len(todo), vocab_size, call.stop_token_ids)
        log_u = torch.rand(len(todo), dtype=torch.float64).log() if aligned.method == "exact" else None
        target = AlignedTarget([aligned.trie(keys[r]) for r in todo], call.stop_token_ids,
                               live=aligned.method == "asap", log_u=log_u, learn=aligned.learn, prompt_len=prompt_len)
        forwards, row_steps = spec_stats.target_forwards, spec_stats.row_steps
        index = torch.tensor(todo)
        out = speculative_generate(
            model, input_ids[index], mask[index], generation_config, logits_processor,
            StoppingCriteriaList([*stopping_criteria, RejectedRows(target)]), strategy,
            stats=spec_stats, grammar=rows, tokenizer=call.tokenizer, verify_target=target,
        )
        out = out if isinstance(out, torch.Tensor) else out.sequences
        invalid = []
        for i, complete in enumerate(target.complete.tolist()):
            text = None
            if complete and not target.rejected[i]:
                text = call.tokenizer.decode(until_stop(out[i, prompt_len:].tolist(), call.stop_token_ids))
            invalid.append(bool(text is not None and call.spec.validation_errors(text)))
        accepted = target.finish(budget, invalid).tolist()
        this_call.rounds += 1
        this_call.attempts += len(todo)
        this_call.samples += sum(accepted)
        by_weight = sum(
            1 for i, ok in enumerate(accepted)
            if not ok and bool(target.rejected[i]) and not bool(torch.isneginf(target.log_weight[i]))
        )
        this_call.rejected_weight += by_weight
        this_call.rejected_dead += len(todo) - sum(accepted) - by_weight
        this_call.target_forwards += spec_stats.target_forwards - forwards
        this_call.row_forwards += spec_stats.row_steps - row_steps
        for i, row in enumerate(todo):
            if accepted[i]:
                results[row] = out[i]
        todo = [row for i, row in enumerate(todo) if not accepted[i]]
        if not todo:
            break
    aligned.last_call = this_call
    aligned.stats.add(this_call)
    if todo:
        raise AlignmentError(
            f"GrammarAligned(method={aligned.method!r}) returned {batch - len(todo)} of {batch} samples in "
            f"{aligned.max_rounds} rounds (acceptance rate {this_call.acceptance_rate:.3f}: "
            f"{this_call.rejected_weight} rejected by the exact acceptance draw, the rest reached max_new_tokens, "
            "a dead prefix or failed validation). Raise max_rounds or max_new_tokens, or use method='asap'."
        )
    width = max(seq.shape[0] for seq in results)
    sequences = torch.full((batch, width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    for row, seq in enumerate(results):
        sequences[row, : seq.shape[0]] = seq
    return sequences
