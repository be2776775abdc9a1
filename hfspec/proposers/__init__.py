"""One module per way of proposing drafts; all speak the protocol in ``base``."""

from hfspec.proposers.base import NoDrafts, Proposal, ProposerSession, SessionContext, StepView, Strategy
from hfspec.proposers.draft_model import DraftModel
from hfspec.proposers.jump_forward import JumpForward
from hfspec.proposers.lookup_or_draft import LookupOrDraft
from hfspec.proposers.prompt_lookup import PromptLookup

__all__ = [
    "DraftModel",
    "JumpForward",
    "LookupOrDraft",
    "NoDrafts",
    "PromptLookup",
    "Proposal",
    "ProposerSession",
    "SessionContext",
    "StepView",
    "Strategy",
]
