"""StreamMind: event-gated streaming video dialogue (Ding et al., ICCV 2025).

Importing the package has no side effects. The public API:

    from streammind import StreamMindConfig, StreamMindForCausalLM, StreamingSession, load_model
"""

from .builder import build_from_parts, build_model, load_model, save_model
from .configuration import StreamMindConfig
from .modeling_streammind import StreamMindForCausalLM
from .processing import StreamMindProcessor
from .streaming import Reply, StreamingSession

__version__ = "0.1.0"

__all__ = [
    "Reply",
    "StreamMindConfig",
    "StreamMindForCausalLM",
    "StreamMindProcessor",
    "StreamingSession",
    "build_from_parts",
    "build_model",
    "load_model",
    "save_model",
]
