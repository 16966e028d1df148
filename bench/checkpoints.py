"""Random-weight Whisper checkpoints of real sizes whose output is fixed, built at run time.

Compute does not depend on weight values, so random weights measure speed as well as real ones,
but a random model's output does: it hallucinates, falls back through every temperature and
loops to the maximum length, differently in every run. Here the decoder's positional embedding
is scaled up and pointed at the output embedding of a fixed script (``<|0.00|> text <|2.00|>
<|endoftext|>``), so greedy decoding emits exactly that script with log-probability ~0: one
30 s window per clip, no fallback, and the same decoder steps in every arm. Everything else
(encoder, decoder blocks, embeddings) stays random.

Run directly to build and check one: ``python -m bench.checkpoints tiny``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench" / "models"
SCRIPT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
STEER = 1000.0  # positional-embedding norm; block outputs are ~10, so this dictates the direction

# Same dimensions as OpenAI's checkpoints of these names (whisper/__init__.py _MODELS).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_mels=80, n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_text_layer=4, n_vocab=51865),
    "base": dict(n_mels=80, n_audio_state=512, n_audio_head=8, n_audio_layer=6, n_text_layer=6, n_vocab=51865),
    "small": dict(n_mels=80, n_audio_state=768, n_audio_head=12, n_audio_layer=12, n_text_layer=12, n_vocab=51865),
    "large-v3": dict(n_mels=128, n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_text_layer=32, n_vocab=51866),
}


def dims_for(size: str) -> dict[str, int]:
    s = SIZES[size]
    return {
        "n_mels": s["n_mels"],
        "n_audio_ctx": 1500,
        "n_audio_state": s["n_audio_state"],
        "n_audio_head": s["n_audio_head"],
        "n_audio_layer": s["n_audio_layer"],
        "n_vocab": s["n_vocab"],
        "n_text_ctx": 448,
        "n_text_state": s["n_audio_state"],
        "n_text_head": s["n_audio_head"],
        "n_text_layer": s["n_text_layer"],
    }


def script_tokens(n_vocab: int) -> tuple[list[int], list[int]]:
    """(sot sequence for English transcription, tokens the decoder must emit after it)."""
    from whisper.tokenizer import get_tokenizer

    tok = get_tokenizer(multilingual=True, num_languages=n_vocab - 51765 - 1, language="en", task="transcribe")
    text = tok.encode(" " + SCRIPT)
    return list(tok.sot_sequence), [tok.timestamp_begin, *text, tok.timestamp_begin + 100, tok.eot]


def build(size: str, seed: int = 0) -> Any:
    """A random model of ``size`` that transcribes any single-window English clip as SCRIPT."""
    import torch
    import whisper
    from whisper.model import ModelDimensions

    torch.manual_seed(seed)
    dims = ModelDimensions(**dims_for(size))
    model = whisper.Whisper(dims)
    sot, script = script_tokens(dims.n_vocab)
    emb = model.decoder.token_embedding.weight.detach()
    pos = torch.randn(dims.n_text_ctx, dims.n_text_state) * 0.01
    # Position p's output predicts the token at p + 1: after sot predict the language (so
    # detection says "en"), after the sot sequence walk through the script.
    targets = {0: sot[1]} | {len(sot) - 1 + i: t for i, t in enumerate(script)}
    for p, t in targets.items():
        direction = emb[t] - emb[t].mean()
        pos[p] = STEER * direction / direction.norm()
    with torch.no_grad():
        model.decoder.positional_embedding.copy_(pos)
    return model


def path_for(size: str) -> Path:
    return CACHE / f"random-{size}-steered.pt"


def ensure(size: str) -> Path:
    """The cached checkpoint for ``size``, built (fp16, openai-whisper's format) if missing."""
    import torch

    out = path_for(size)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build(size)
    state = {k: v.half() for k, v in model.state_dict().items()}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": state}, tmp)
    os.replace(tmp, out)
    return out


def check(path: Path, audio_file: str) -> dict[str, Any]:
    """Transcribe one clip as the daemon would; the text must be SCRIPT."""
    import whisper

    model = whisper.load_model(str(path), device="cpu")
    result = model.transcribe(audio_file, language="en", fp16=False, verbose=None)
    return {"text": result["text"].strip(), "segments": len(result["segments"]), "ok": result["text"].strip() == SCRIPT}


if __name__ == "__main__":
    size = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    p = ensure(size)
    clip = str(Path(__file__).resolve().parent.parent / "tests" / "data" / "jfk.flac")
    print(p, check(p, clip))
