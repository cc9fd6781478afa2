"""report.md: the run's report for people, from report.json's data."""

from __future__ import annotations

__all__ = ["prune_markdown", "pruning_lines", "shown_status", "to_markdown"]


def shown_status(artifact: dict) -> str:
    """The artifact's status, with ``unstable`` where report.json marks its benchmark so."""
    status = artifact.get("status") or "—"
    if (artifact.get("bench") or {}).get("unstable"):
        return "unstable" if status == "ok" else f"{status}, unstable"
    return status


def _fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def to_markdown(report: dict) -> str:
    lines = [f"# edgeopt report: {report['input']['spec']}", ""]
    lines += [f"edgeopt {report['edgeopt']}, {report['created_at']}, host "
              f"{report['host'].get('cpu', report['host']['machine'])}.", ""]
    lines += [f"- Calibration: {report['data']['calibration']}",
              f"- Evaluation: {report['data']['evaluation']}",
              f"- Metric: `{report['data']['metric']}`"]
    states = report["data"].get("state_inputs")
    if states:
        lines.append("- State inputs (fed from the output named): "
                     + ", ".join(f"`{i}` <- `{o}`" for i, o in states.items()))
    lines.append("")
    lines += _artifact_lines(report["artifacts"])
    lines += ["", "## Steps", "", "| step | seconds | parity (max abs diff / cosine) |",
              "|---|---|---|"]
    for s in report["steps"]:
        p = s.get("parity")
        parity = f"{p['max_abs_diff']:.2e} / {p['cosine']:.6f}" if p else "—"
        lines.append(f"| {s['name']} | {s['seconds']:.2f} | {parity} |")
    if report.get("pruning"):
        lines += pruning_lines(report["pruning"])
    lines += _quantization_lines(report["artifacts"])
    if report.get("accuracy_budget"):
        lines += _budget_lines(report["accuracy_budget"])
    if report.get("tradeoffs"):
        lines += _tradeoff_lines(report["tradeoffs"])
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in report["warnings"]]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in report["libraries"].items()]
    return "\n".join(lines) + "\n"


def _tradeoff_lines(tradeoffs: list[dict]) -> list[str]:
    """Each default that trades speed for accuracy, as measured (edgeopt.tradeoffs)."""
    lines = ["", "## Speed for accuracy", "",
             "Each default that keeps part of an INT8 model in float, against the same build "
             "without it, on the evaluation set; it stays only when it buys accuracy. A row "
             "marked not weighed was kept as built, unmeasured, for the reason given.", "",
             "| runtime | choice | metric | with | without | gain | min gain | p50 with / "
             "without | kept |", "|---|---|---|---|---|---|---|---|---|"]
    for t in tradeoffs:
        if "not_weighed" in t:
            lines.append(f"| {t['runtime']} | {t['what']} | — | — | — | — | — | — | "
                         f"yes, not weighed: {t['not_weighed']} |")
            continue
        if "not_built" in t:
            lines.append(f"| {t['runtime']} | {t['what']} | — | — | — | — | — | — | "
                         f"no, not built: {t['not_built']} |")
            continue
        if "follows" in t:
            lines.append(f"| {t['runtime']} | {t['what']} | — | — | — | — | — | — | "
                         f"{'yes' if t['kept'] else 'no: quantized'}, as weighed on "
                         f"{t['follows']} |")
            continue
        cost = t["p50_cost"]
        cost = cost if isinstance(cost, str) else (
            f"{t['p50_ms_with']:.3f} / {t['p50_ms_without']:.3f} ms ({cost:.2f}x)")
        lines.append(f"| {t['runtime']} | {t['what']} | {t['metric']} | {t['with']:.4f} | "
                     f"{t['without']:.4f} | {t['gain']:+.4f} | {t['min_gain']:g} | {cost} | "
                     f"{'yes' if t['kept'] else 'no: quantized'} |")
    return lines


def _artifact_lines(artifacts: list[dict]) -> list[str]:
    lines = ["## Artifacts", "",
             "| file | runtime | device | precision | size (KB) | zipped (KB) | p50 ms "
             "| p50 95% CI | p90 ms | p99 ms | CV | speedup vs FP32 | metric | label | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in artifacts:
        b = a.get("bench") or {}
        acc = a.get("accuracy") or {}
        ci = b.get("p50_ci95_ms")
        lines.append(
            f"| {a['path']} | {a['runtime']} | {a['device'] or '—'} | {a['precision']} | "
            f"{a['size_bytes'] / 1024:.0f} | "
            f"{_fmt(a.get('size_zipped_bytes') and a['size_zipped_bytes'] / 1024, '.0f')} | "
            f"{_fmt(b.get('p50_ms'))} | {f'{ci[0]:.3f}–{ci[1]:.3f}' if ci else '—'} | "
            f"{_fmt(b.get('p90_ms'))} | "
            f"{_fmt(b.get('p99_ms'))} | {_fmt(b.get('cv'))} | {_fmt(a.get('speedup_vs_fp32'), '.2f')} | "
            f"{_fmt(acc.get('value'), '.4f')} | {b.get('label', '—')} | {shown_status(a)} |"
        )
    untimed = sorted({b["reason"] for a in artifacts
                      if (b := a.get("bench") or {}).get("label") == "not-run" and "reason" in b})
    lines += [""] + [f"Not timed: {reason}." for reason in untimed] if untimed else []
    # Secondary figures beside the metric (e.g. minilm's embedding cosine to FP32), per file.
    extra = {a["path"]: {k: v for k, v in (a.get("accuracy") or {}).items()
                         if k not in ("metric", "value", "samples")} for a in artifacts}
    if any(extra.values()):
        lines += [""] + [f"- `{path}`: " + ", ".join(
            f"{k} {_fmt(v, '.4f') if isinstance(v, float) else v}" for k, v in e.items())
            for path, e in extra.items() if e]
    return lines


def _quantization_lines(artifacts: list[dict]) -> list[str]:
    quant = [a for a in artifacts if a.get("quantization")]
    if not quant:
        return []
    lines = ["", "## Quantization", ""]
    seen = set()
    for a in quant:
        if a["path"] in seen:
            continue
        seen.add(a["path"])
        q = a["quantization"]
        lines.append(f"- `{a['path']}`: calibrator {q['calibrator']}; "
                     f"FP32 nodes: {', '.join(q['excluded_nodes']) or 'none'}")
        lines += [f"  - {note}" for note in q.get("notes", [])]
        if q.get("reverted_to_fp32"):
            lines.append(f"  - returned to FP32 for the accuracy budget: "
                         f"{', '.join(q['reverted_to_fp32'])}")
        if q.get("layer_sqnr_worst"):
            lines += ["", "  | worst layers: tensor | node | SQNR vs FP32 (dB) |",
                      "  |---|---|---|"]
            lines += [f"  | {r['tensor']} | {r['node']} | {r['sqnr_db']:.1f} |"
                      for r in q["layer_sqnr_worst"]]
            lines.append("")
    return lines


def _budget_lines(budget: dict) -> list[str]:
    lines = ["", "## Accuracy budget", "",
             f"--max-accuracy-drop {budget['max_accuracy_drop']} (allowed drop "
             f"{budget['allowed_drop']:.4f} from FP32 {budget['fp32_value']:.4f}): "
             f"**{'met' if budget['met'] else 'NOT met'}**", ""]
    for runtime, b in budget["runtimes"].items():
        lines.append(f"- {runtime}: metric {b['value']:.4f}, drop {b['drop']:.4f}, "
                     f"{'met' if b['met'] else 'not met'}; FP32 again: "
                     f"{', '.join(b['reverted_to_fp32']) or 'none'}")
    return lines


def pruning_lines(p: dict) -> list[str]:
    """The pruning section: what was removed, what it cost, what the file holds."""
    lines = ["", "## Pruning", "",
             f"- mode {p['mode']}, ratio {p['ratio']:g}"
             + (f", importance {p['importance']}" if p.get("importance") else "")
             + (f"; kept whole: {', '.join(p['ignore'])}" if p.get("ignore") else ""),
             f"- MACs {p['macs_before'] / 1e6:.1f} M -> {p['macs_after'] / 1e6:.1f} M "
             f"({p['macs_ratio']:.3f}x); parameters {p['params_before'] / 1e6:.3f} M -> "
             f"{p['params_after'] / 1e6:.3f} M ({p['params_ratio']:.3f}x)",
             f"- {p['metric']}: {p['metric_before_finetune']:.4f} after pruning"
             + (f", {p['metric_after_finetune']:.4f} after fine-tuning"
                if "metric_after_finetune" in p else " (not fine-tuned)")]
    lines += [f"- {note}" for note in p.get("notes", [])]
    ft = p.get("finetune")
    if ft:
        lines += [f"- fine-tuning: {ft['mode']} on {ft['data']}; lr {ft['lr']:g}, weight decay "
                  f"{ft['weight_decay']:g}, global batch {ft['global_batch']}, "
                  f"{ft['world_size']} process(es)", "",
                  "| epoch | loss | validation | seconds |", "|---|---|---|---|"]
        lines += [f"| {e['epoch']} | {e['loss']:.4f} | {e['val_metric']:.4f} | "
                  f"{e['seconds']:.1f} |" for e in ft["epochs"]]
    art = p.get("artifact")
    if art:
        head = f"- in the exported FP32 ONNX: {art['zeros']:,} of {art['weights']:,} weights " \
               f"are zero ({art['sparsity']:.2%})"
        if "pruned_layers_sparsity" in art:
            head += f"; {art['pruned_layers_sparsity']:.2%} over the {art['pruned_layers']} " \
                    "pruned layers"
        lines += ["", head, "", "| weight | shape | sparsity |", "|---|---|---|"]
        lines += [f"| {r['tensor']} | {'x'.join(map(str, r['shape']))} | {r['sparsity']:.2%} |"
                  for r in art["layers"]]
    return lines


def prune_markdown(report: dict) -> str:
    lines = [f"# edgeopt prune: {report['input']['spec']}", ""]
    lines += [f"- Evaluation: {report['data']['evaluation']}", ""]
    lines += ["| file | size (KB) | zipped (KB) | metric |", "|---|---|---|---|"]
    for a in report["artifacts"]:
        acc = a.get("accuracy") or {}
        zipped = a.get("size_zipped_bytes")
        lines.append(f"| {a['path']} | {a['size_bytes'] / 1024:.0f} | "
                     f"{_fmt(zipped and zipped / 1024, '.0f')} | {_fmt(acc.get('value'), '.4f')} |")
    lines += pruning_lines(report["pruning"])
    return "\n".join(lines) + "\n"
