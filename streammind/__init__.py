"""StreamMind: event-gated streaming video dialogue (Ding et al., ICCV 2025).

Importing the package has no side effects. The public API:

    from streammind import StreamMindConfig, StreamMindForCausalLM, StreamMindProcessor, StreamingSession, Engine, load_model

The package is layered; no lower layer imports a higher one:

- the model core (this folder): configuration, vision, perception, gate, sampling,
  processing, modeling_streammind, builder; inference: decoding, engine, streaming;
  infrastructure: errors, fileio; ops/ (kernels with plain-PyTorch references);
- media/ (decoding, sources), training/ (arguments, datasets, collator, features, the train
  entry, annotations), evaluation/ (metrics, protocols, the task runner, re-scoring), and
  synthetic/ (the embedded world and its tower pretraining);
- apps/: the `streammind` command and its applications (runtime, bench, quickstart,
  checkpoint conversion).

Compatibility shims keep the entry points of earlier versions working: `python -m
streammind.train` (and `.convert`, `.world`, `.tower_pretrain`, `.quickstart`, `.bench`,
`.features`, `.cli`, `.datasets.converters`) runs the new `main`; `streammind.runtime` and
`streammind.datasets.video` say where their contents went.
"""

from .builder import build_from_parts, build_model, load_model, save_model
from .configuration import StreamMindConfig
from .engine import Engine
from .modeling_streammind import StreamMindForCausalLM
from .processing import StreamMindProcessor
from .streaming import Reply, StreamingSession

__version__ = "0.1.0"

__all__ = [
    "Engine",
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
