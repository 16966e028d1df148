"""Word error rate, as the accuracy tests and the benchmarks measure it."""

from __future__ import annotations


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level edit distance (substitutions + deletions + insertions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref != hyp))
    return row[-1]


def word_error_rate(pairs: list[tuple[str, str]], language: str) -> float:
    """WER of (reference, hypothesis) pairs taken together, after whisper's own normaliser for the
    language (``EnglishTextNormalizer`` for English, which drops fillers; ``BasicTextNormalizer`` else)."""
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    normalise = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()
    errors = words = 0
    for reference, hypothesis in pairs:
        ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
        errors += word_errors(ref, hyp)
        words += len(ref)
    return errors / max(words, 1)
