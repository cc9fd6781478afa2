"""Speed is never traded silently. A default that trades speed for accuracy (a CNN's FP32
stem on ONNX Runtime) or accuracy for speed on other CPUs (the AVX2 saturation guard's
coarser weight scales, instead of slower U8U8 kernels) stays only when it buys accuracy on
the evaluation set:
the same build without it is made, evaluated and, when the run benchmarks, timed against
it on the host, interleaved. Where the choice does not buy at least :func:`min_gain` of
the run's metric, the layers are quantized and the build without it is the artifact. The
report lists every choice with its measured gain and p50 cost either way.

``--effort fast`` (recipe ``quant.effort``) weighs nothing: every choice is kept and the
report says it was not weighed.

The AVX2 saturation guard is not built at all where no target of the runtime can saturate
(:func:`guard_not_needed`: there it can only cost accuracy), and a runtime whose INT8 is
another's settled build converted (OpenVINO's QDQ route) takes that one's choices
(:func:`follow_choices`); the report says both.

The backend says which choices its build made (:meth:`Backend.speed_choices`); the search
knows nothing of runtimes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = ["Choice", "adopt", "describe", "discard", "fast_shortcuts", "follow_choices",
           "guard_choice", "guard_not_needed", "leave_out_guard", "min_gain", "not_built",
           "not_weighed", "saturating_elsewhere", "time_pair", "weigh", "weigh_choices"]

# The metric gain that counts as "buys accuracy": a fraction-of-samples metric (top-1,
# agreement, a custom one) must gain at least this much and at least one sample more;
# cosine and SQNR have their own scale.
MIN_GAIN = {"cosine": 0.0005, "sqnr": 0.25}
MIN_FRACTION_GAIN = 0.002
BENCH_ROUNDS = 2            # interleaved A/B rounds; each side's p50 is its lowest
FAST = "--effort fast"      # why a choice is kept unweighed under the fast preset
FAST_COST = "measured -0.5 pt top-1 agreement on mobilenet-v2 (docs/speed.md)"
NNCF_FAST_NOTE = "fast bias correction)"      # in the NNCF note of quantize_ov.py
NNCF_FAST_COST = ("measured 0.65-1.1 dB less output SQNR against FP32 on mobilenet-v2 "
                  "(docs/speed.md)")


@dataclass(frozen=True)
class Choice:
    """A default that trades speed for accuracy, and the build without it."""

    name: str                   # e.g. "fp32-stem"
    what: str                   # for people: "the stem (3 convolutions) kept FP32"
    without: dict               # QuantConfig fields of the build without it
    nodes: tuple[str, ...] = ()
    # Its worth depends on the CPU's int8 kernels (the AVX2 saturation guard): not weighed
    # when a target that is not this machine may need it (:func:`saturating_elsewhere`).
    host_specific: bool = False


_GUARD_NOTE = re.compile(r"AVX2 saturation guard: .*?(\d+) of (\d+) output channels got a "
                         r"coarser weight scale")


def guard_choice(art, config) -> list[Choice]:
    """The AVX2 saturation guard, when this build has it and it changed any weight scale
    (its note in the artifact's quantization record says how many)."""
    if not config.saturation_guard:
        return []
    for note in (art.quantization or {}).get("notes", ()):
        found = _GUARD_NOTE.search(note)
        if found and int(found.group(1)) > 0:
            return [Choice("saturation-guard",
                           f"the AVX2 saturation guard ({found.group(1)} of {found.group(2)} "
                           "output channels on coarser weight scales)",
                           {"saturation_guard": False}, host_specific=True)]
    return []


DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def _may_saturate(unit) -> bool:
    """An x86 CPU without int8 dot products (or whose ISA is unknown): its U8S8 kernels
    add pairs of products into a saturating int16."""
    if getattr(unit, "kind", "cpu") != "cpu" or str(unit.arch or "").startswith(("aarch64",
                                                                                "arm")):
        return False
    return not any(f in (unit.isa or ()) for f in DOT_PRODUCT)


def saturating_elsewhere(targets, runtime: str) -> list[str]:
    """The target CPUs of ``runtime`` that are not this machine and may saturate int16
    accumulation (x86 without int8 dot products, or ISA unknown): for them the guard is
    kept unweighed, since the evaluation here cannot see what it prevents there."""
    return [t.label for t in targets
            if t.runtime == runtime and t.absent and _may_saturate(t.unit_obj)]


def guard_not_needed(targets, runtime: str) -> str | None:
    """Why no build of ``runtime`` needs the saturation guard, or None: every target
    unit that runs ``runtime`` (at least one) accumulates int8 products without saturating
    (a CPU with int8 dot products, an ARM CPU, or not a CPU). The guard's coarser scales
    can then only cost accuracy, and weighing it would only measure noise."""
    units = [t for t in targets if t.runtime == runtime]
    if not units or any(_may_saturate(t.unit_obj) for t in units):
        return None
    named = ", ".join(f"{t.label}{'' if t.absent else ' (this machine)'}" for t in units)
    return f"no target can saturate: {named} (int8 dot products, ARM, or not a CPU)"


def leave_out_guard(state, runtime: str) -> bool:
    """Whether ``runtime``'s builds in the run ``state`` leave the saturation guard out
    (the recipe asks for it, but :func:`guard_not_needed`); the report and the console
    then say why."""
    reason = (guard_not_needed(state.targets, runtime)
              if state.recipe.quant.saturation_guard else None)
    if reason is None:
        return False
    record = not_built(runtime, reason)
    state.tradeoffs.append(record)
    state.progress.console.print(f"  {describe(record)}")
    return True


def not_built(runtime: str, reason: str) -> dict:
    """The record of the saturation guard left out of a build, and why."""
    return {"runtime": runtime, "choice": "saturation-guard", "what": "the AVX2 saturation "
            "guard", "kept": False, "not_built": reason}


def not_weighed(choice: Choice, runtime: str, reason: str) -> dict:
    """The record of a choice kept without measuring it, and why."""
    return {"runtime": runtime, "choice": choice.name, "what": choice.what, "kept": True,
            "not_weighed": reason}



def min_gain(metric: str, samples: int) -> float:
    """The smallest metric gain that counts as buying accuracy for ``metric``."""
    for kind, gain in MIN_GAIN.items():
        if kind in metric:              # also "output_cosine_vs_fp32"
            return gain
    return max(MIN_FRACTION_GAIN, 1.0 / max(samples, 1))


def weigh(choice: Choice, art, *, build: Callable, evaluate: Callable, drop: Callable,
          acceptable: Callable, time_pair: Callable | None, adopt: Callable,
          discard: Callable) -> dict:
    """Measure ``choice`` on the INT8 artifact ``art`` and keep the better build.

    ``build(config_changes)`` makes the artifact without the choice (under another name),
    ``evaluate(a)`` scores an artifact, ``drop(value)`` is its metric drop from FP32
    (positive: worse), ``acceptable(value)`` whether a metric value is within the run's
    budget or gate (a build outside it is never adopted), ``time_pair(a, b)`` their host
    p50s in ms (None: not timed), ``adopt(variant)`` makes the variant the artifact,
    ``discard(variant)`` removes it. Returns the report's record of the choice."""
    value = art.accuracy["value"]
    variant = build(choice.without)
    try:
        variant_value = evaluate(variant)
        gain = drop(variant_value) - drop(value)                # what the choice buys
        threshold = min_gain(art.accuracy["metric"], art.accuracy["samples"])
        p50 = time_pair(art, variant) if time_pair is not None else None
    except BaseException:
        discard(variant)
        raise
    kept = gain >= threshold - 1e-12 or not acceptable(variant_value)
    record = {"runtime": art.runtime, "choice": choice.name, "what": choice.what,
              "metric": art.accuracy["metric"], "with": round(value, 6),
              "without": round(variant_value, 6), "gain": round(gain, 6),
              "min_gain": round(threshold, 6),
              "kept": kept}
    if choice.nodes:
        record["nodes"] = list(choice.nodes)
    if p50 is None:
        record["p50_cost"] = "not timed"
    else:
        (with_ms, without_ms) = p50
        record["p50_ms_with"], record["p50_ms_without"] = round(with_ms, 4), round(without_ms, 4)
        record["p50_cost"] = round(with_ms / without_ms, 3)   # >1: the choice is slower
    if kept:
        discard(variant)
    else:
        adopt(variant)
    return record


def describe(record: dict) -> str:
    """One line for the console: what the choice bought, cost, and what became of it."""
    if "not_weighed" in record:
        return f"{record['runtime']}: {record['what']}: kept, not weighed ({record['not_weighed']})"
    if "not_built" in record:
        return f"{record['runtime']}: {record['what']}: not built ({record['not_built']})"
    if "follows" in record:
        verdict = "kept" if record["kept"] else "dropped"
        return f"{record['runtime']}: {record['what']}: {verdict}, as weighed on {record['follows']}"
    cost = record["p50_cost"]
    cost = cost if isinstance(cost, str) else f"p50 {cost:.2f}x the build without it"
    verdict = ("kept: it buys accuracy" if record["kept"] else
               "dropped: it buys less than " f"{record['min_gain']:g}, so the layers are quantized")
    return (f"{record['runtime']}: {record['what']}: {record['metric']} {record['with']:.4f} "
            f"with, {record['without']:.4f} without (gain {record['gain']:+.4f}; {cost}); "
            f"{verdict}")


def time_pair(targets, recipe, staging, feeds) -> Callable | None:
    """A ``time_pair(a, b)`` that times two artifacts on the host target of their runtime,
    interleaved, or None when the run does not benchmark or no such target is here."""
    if not recipe.benchmark:
        return None
    from edgeopt._measure import run_target, target_availability

    def timed(a, b) -> tuple[float, float] | None:
        target = next((t for t in targets if t.runtime == a.runtime
                       and target_availability(t).ok), None)
        if target is None:
            return None
        best = [float("inf"), float("inf")]
        for _ in range(BENCH_ROUNDS):
            for i, art in enumerate((a, b)):
                row = run_target(target, staging.path(art.file), feeds, recipe.bench)
                p50 = row.get("bench", {}).get("p50_ms")
                if p50 is None:
                    return None
                best[i] = min(best[i], p50)
        return best[0], best[1]

    return timed


def adopt(staging, art, variant) -> None:
    """The variant build becomes ``art``: its files take ``art``'s names, its figures
    ``art``'s place."""
    for src, dst in zip((variant.file, *variant.companions), (art.file, *art.companions),
                        strict=True):
        os.replace(staging.path(src), staging.path(dst))
    art.accuracy, art.quantization = variant.accuracy, variant.quantization
    art.sensitivity, art.status = variant.sensitivity, variant.status


def discard(staging, variant) -> None:
    for name in (variant.file, *variant.companions):
        staging.path(name).unlink(missing_ok=True)


def weigh_choices(state, backend, job, art, *, build: Callable, evaluate: Callable,
                  complete: Callable | None = None):
    """Each choice ``backend`` reports for ``art``'s build (``job``), weighed in turn on the
    run ``state`` (an ``edgeopt.steps.RunState``); a later choice is weighed on the build
    without the earlier dropped ones. ``build(job)`` makes an INT8 artifact, ``evaluate(a)``
    scores one; the records go to ``state.tradeoffs`` and the console. A variant is built
    with ``layer_sqnr=False`` (most are discarded); ``complete(job, art)`` gives ``art``
    the per-layer SQNR the build that stays (the last adopted variant's, else ``job``'s)
    left out, once, after every choice. Under ``--effort fast`` nothing is weighed: every
    choice is kept and recorded "not weighed", and so is each shortcut of the build
    (:func:`fast_shortcuts`). Returns the settings of the build that stays ``art``."""
    budget = state.budget
    elsewhere = saturating_elsewhere(state.targets, art.runtime)
    fast = state.recipe.quant.effort == "fast"
    adopted = None                      # the job of the last variant adopted
    for choice in backend.speed_choices(art, job):
        if fast:
            record = not_weighed(choice, art.runtime, FAST)
        elif choice.host_specific and elsewhere:
            record = not_weighed(choice, art.runtime, f"{', '.join(elsewhere)} may need it "
                                 "and is not this machine")
        else:
            def variant_job(changes: dict, c=choice, base=job):
                return replace(base, variant=f"without-{c.name}",
                               config=replace(base.config, **changes),
                               layer_sqnr=complete is None)

            record = weigh(
                choice, art, evaluate=evaluate, drop=budget.drop,
                build=lambda changes, v=variant_job: build(v(changes)),
                acceptable=lambda v: budget.allowed_drop is None
                or budget.drop(v) <= budget.allowed_drop + 1e-9,
                time_pair=time_pair(state.targets, state.recipe, state.staging,
                                    state.prepared.eval_inputs[0]),
                adopt=lambda v: adopt(state.staging, art, v),
                discard=lambda v: discard(state.staging, v))
            if not record["kept"]:
                adopted = variant_job(choice.without)
                job = replace(job, config=adopted.config)
        state.tradeoffs.append(record)
        state.progress.console.print(f"  {describe(record)}")
    if complete is not None:            # one pass, for the build that stays (its own job)
        complete(adopted or job, art)
    for record in fast_shortcuts(art) if fast else ():
        state.tradeoffs.append(record)
        state.progress.console.print(f"  {describe(record)}")
    return job.config


def follow_choices(state, runtime: str, lead: str) -> None:
    """``runtime``'s INT8 is ``lead``'s settled QDQ model converted (``Backend.follows``):
    each choice ``lead`` weighed or kept unweighed holds for it as well, and the report
    says so (the guard's record of ``runtime`` itself stays its own)."""
    for record in [t for t in state.tradeoffs if t["runtime"] == lead and "not_built" not in t]:
        follower = {"runtime": runtime, "choice": record["choice"], "what": record["what"],
                    "kept": record["kept"], "follows": f"{lead} (the same QDQ model)"}
        state.tradeoffs.append(follower)
        state.progress.console.print(f"  {describe(follower)}")


def fast_shortcuts(art) -> list[dict]:
    """The shortcuts ``--effort fast`` made in ``art``'s build that cost accuracy, each
    recorded as kept, not weighed: the bias correction that took its input means from the
    weight-rounding pass (the quantizers whose notes say they correct biases after rounding;
    ``calibrate.quantize.EFFORTS``), and NNCF's fast bias correction instead of its full one
    (``calibrate.quantize_ov``)."""
    notes = (art.quantization or {}).get("notes", ())
    found = []
    if any(note.startswith("bias correction:") for note in notes):
        found.append(not_weighed(Choice("shared-bias-pass", "bias correction with the input "
                                        "means of the weight-rounding pass (one calibration "
                                        "pass less)", {}),
                                 art.runtime, f"{FAST}: {FAST_COST}"))
    if any(NNCF_FAST_NOTE in note for note in notes):
        found.append(not_weighed(Choice("nncf-fast-bias-correction", "NNCF's fast bias "
                                        "correction instead of its full one", {}),
                                 art.runtime, f"{FAST}: {NNCF_FAST_COST}"))
    return found
