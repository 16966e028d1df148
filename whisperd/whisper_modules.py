"""openai-whisper's torch-free modules, without importing torch.

``whisper.utils`` (the result writers) and ``whisper.tokenizer`` (the language table) need only
the standard library and tiktoken, but ``import whisper.utils`` runs whisper's package
``__init__``, which imports torch: ~100 MB more per process and libtorch's thread pools in a
worker that runs faster-whisper, or in the supervisor. Where whisper is already imported its
own modules are used; otherwise the file is loaded on its own, once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(name: str) -> ModuleType:
    """``whisper.<name>`` (``utils`` or ``tokenizer``), importing torch only if whisper already did."""
    if "whisper" in sys.modules:
        return importlib.import_module(f"whisper.{name}")
    alias = f"whisperd._whisper_{name}"
    if alias in sys.modules:
        return sys.modules[alias]
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        raise ImportError("openai-whisper is not installed")
    source = Path(spec.origin).parent / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(alias, source)
    if module_spec is None or module_spec.loader is None:
        raise ImportError(f"cannot load {source}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[alias] = module
    module_spec.loader.exec_module(module)
    return module
