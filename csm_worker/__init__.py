"""csm_worker: load CSM-1B and render dialogue with a batched engine. Knows nothing of Ray or storage."""

from .engine.requests import ConversationDone, ConversationRequest, RenderedTurn, Segment, TurnRequest
from .errors import BadCheckpoint, ModelLoadError
from .generator import Generator, RenderError, load_csm_1b
from .model.loading import DEFAULT_MODEL, LoadedModel, load_pretrained

__all__ = [
    "DEFAULT_MODEL", "BadCheckpoint", "ConversationDone", "ConversationRequest", "Generator", "LoadedModel",
    "ModelLoadError", "RenderError", "RenderedTurn", "Segment", "TurnRequest", "load_csm_1b", "load_pretrained",
]
