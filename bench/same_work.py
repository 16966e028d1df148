"""Section ``same_work``: whisperd against the direct faster-whisper loop, the same work, to 1 %.

``real_hosts`` runs every arm once per condition, minutes apart; on a shared VM one pass moves
by 10-15 %, too much for its "same work ≥ 0.99" goal. Here only the two arms that do the same
work run: whisperd on faster-whisper in the loop's layout (1 worker × every core, the gate on,
``short_window = false``, greedy) and the direct loop of ``real_hosts`` (``WhisperModel`` int8,
``cpu_threads`` = cores, ``vad_filter=True``, beam 1, conditioning off). Both stay up; each
round runs one pass of each arm back to back, idle, in alternating order, and the figure is the
median of the rounds' ratios, as in the ``real`` and ``engines`` sections.
"""

from __future__ import annotations

import statistics

from bench.context import Ctx
from bench.real_hosts import DirectArm, HostSizes, WhisperdArm, long_workload, short_workload, warm_up
from bench.report import Section

ROUNDS = 6  # even: each arm goes first in half the rounds, so an order effect cancels


def run(ctx: Ctx) -> Section:
    s = Section("same work (base)")
    sizes = HostSizes.of(ctx.sizes)
    audio = ctx.scratch("same-work-audio")
    workloads = [short_workload(sizes, audio), long_workload(sizes, audio)]
    rounds = 2 if sizes.clips_per_set else ROUNDS
    arms: list[WhisperdArm | DirectArm] = []
    try:
        label = f"whisperd faster-whisper, 1 worker × {ctx.cores} threads"
        arms.append(WhisperdArm(ctx, "w-fw-1x", label, "faster-whisper", workloads,
                                workers={"count": 1, "threads": ctx.cores},
                                transcribe={"short_window": False}))  # fmt: skip
        arms.append(DirectArm(ctx))
        warm_up(ctx, arms, workloads[0])
        ratios: dict[str, list[float]] = {w.key: [] for w in workloads}
        rates: dict[tuple[str, str], list[float]] = {}
        texts: dict[tuple[str, str], list[str]] = {}
        for r in range(rounds):
            for w in workloads:
                order = arms if r % 2 == 0 else arms[::-1]
                for arm in order:
                    p = arm.run(w, f"r{r}-{w.key}")
                    rates.setdefault((arm.key, w.key), []).append(p.rate)
                    texts.setdefault((arm.key, w.key), p.texts)
                ratios[w.key].append(rates["w-fw-1x", w.key][-1] / rates["direct", w.key][-1])
    finally:
        for arm in arms:
            arm.close()
    for w in workloads:
        ours, loop = (statistics.median(rates[k, w.key]) for k in ("w-fw-1x", "direct"))
        s.add(f"{w.title}: whisperd / direct loop, audio s/s (medians)", f"{ours:.2f} / {loop:.2f}")
        median = statistics.median(ratios[w.key])
        spread = ", ".join(f"{x:.3f}" for x in ratios[w.key])
        s.add(f"{w.title}: whisperd / direct loop (median of round ratios)", f"{median:.3f}", "≥ 0.99", median >= 0.99)
        s.note(f"{w.title}: round ratios {spread}")
        first, second = ratios[w.key][::2], ratios[w.key][1::2]  # whisperd ran first / second
        if first and second:
            s.note(f"{w.title}: whisperd first {statistics.geometric_mean(first):.3f}, second "
                   f"{statistics.geometric_mean(second):.3f} (an order effect cancels in the median)")  # fmt: skip
        for set_name in w.sets:
            ours_wer, loop_wer = (w.wer(texts[k, w.key])[set_name] for k in ("w-fw-1x", "direct"))
            s.add(f"WER {set_name}: whisperd / direct loop", f"{ours_wer:.1%} / {loop_wer:.1%}")
    s.note(f"{rounds} rounds, each arm once per workload per round, back to back, alternating which goes first")
    ctx.results[s.name] = {"rates": {"/".join(k): v for k, v in rates.items()}, "ratios": ratios}
    return s
