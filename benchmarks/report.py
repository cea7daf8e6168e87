"""Benchmark outputs: ``results.json``, ``scaling.csv``, ``summary.md`` and ``scaling.png``."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

GIB = 2**30
VARIANT_LABELS = {
    "sdlgm_pyro": "SDLGM, Pyro (library step)",
    "sdlgm_pyro_validated": "SDLGM, Pyro, validated step",
    "sdlgm_pyro_joint": "SDLGM, Pyro, joint slot site",
    "sdlgm_pyro_defaults": "SDLGM, Pyro, library defaults",
    "sdlgm_torch_joint": "SDLGM, hand-written PyTorch loss, joint slots",
    "sdlgm_torch": "SDLGM, hand-written PyTorch loss",
    "dense_vae": "dense VAE",
    "dense_mlp": "dense MLP (BCE)",
}
CSV_COLUMNS = ["section", "task", "mode", "K", "L0", "batch", "candidates", "status", "median_step_ms", "mean_step_ms",
               "examples_per_s", "steps", "peak_rss_gb", "peak_increase_gb", "cuda_peak_gb", "watched_peak_gb", "estimate_gb",
               "note"]


# ----------------------------------------------------------------------------- rows


MODE_ORDER = {"set_bound": 0, "per_slot": 1, "shared": 2, "shortlist": 3}


def _group_key(group: tuple[str, str]):
    task, mode = group
    return (task != "unsupervised", MODE_ORDER.get(mode, 9), mode)



def memory_of(result: dict) -> dict:
    """Peak memory of a measured job in GB: ``peak`` (absolute) and ``increase`` (over the RSS before
    building the networks); on CUDA the GPU's peak allocation, the host's RSS kept as ``host_*``."""
    mem = result.get("memory") or {}
    out = {"peak_rss_gb": mem.get("peak_rss_bytes", math.nan) / GIB,
           "peak_increase_gb": mem.get("peak_rss_increase_bytes", math.nan) / GIB,
           "cuda_peak_gb": mem.get("cuda_peak_allocated_bytes", math.nan) / GIB,
           "cuda_increase_gb": mem.get("cuda_peak_increase_bytes", math.nan) / GIB}
    return out


def scaling_rows(results: list[dict]) -> list[dict]:
    rows = []
    for result in results:
        job = result["job"]
        if job["section"] not in ("grid", "target"):
            continue
        row = {key: job.get(key) for key in ("section", "task", "mode", "K", "L0", "batch", "candidates")}
        row["status"] = result["status"]
        estimate = result.get("estimate")
        row["estimate_gb"] = estimate["total_bytes"] / GIB if estimate else math.nan
        row["note"] = "" if result["status"] == "ok" else result.get("error", "")
        # the parent's own sampling of the cell's resident memory (also kept for cells it stopped)
        row["watched_peak_gb"] = result.get("watched_peak_rss_bytes", math.nan) / GIB
        if result["status"] == "ok":
            timing = result["variants"]["sdlgm_pyro"]
            row.update(median_step_ms=timing["median_step_s"] * 1e3, mean_step_ms=timing["mean_step_s"] * 1e3,
                       examples_per_s=timing["examples_per_s"], steps=timing["steps"])
            mem = memory_of(result)
            row.update(peak_rss_gb=mem["peak_rss_gb"], peak_increase_gb=mem["peak_increase_gb"],
                       cuda_peak_gb=mem["cuda_peak_gb"])
        rows.append(row)
    return rows


def step_memory_gb(row: dict, device: str) -> float:
    """The memory figure the scaling analysis uses: RSS increase on CPU, peak allocation on CUDA."""
    return row.get("cuda_peak_gb", math.nan) if device == "cuda" else row.get("peak_increase_gb", math.nan)


# ----------------------------------------------------------------------------- analysis


def verdict_ratio(ratio: float, target: float | None) -> str:
    if target is None:
        return "no target"
    if not math.isfinite(ratio):
        return "not measured"
    if ratio <= target:
        return f"met ({ratio:.3f}x <= {target:g}x)"
    # three decimals and a tenth of a percent: a near miss (1.3049 vs 1.3) must not read as a pass
    return (f"MISSED by {ratio / target:.3f}x ({ratio:.3f}x vs {target:g}x, "
            f"+{100 * (ratio / target - 1):.1f}% over)")


def task_label(job: dict) -> str:
    """The task of a headline or compare job; the classifier's set-bound objective is named."""
    return job["task"] + (" (set bound)" if job.get("mode") == "set_bound" else "")


def ratios(results: list[dict], targets: dict) -> list[dict]:
    """The step-time ratios of each ``compare`` job (medians over all interleaved rounds)."""
    out = []
    for result in results:
        job = result["job"]
        if job["section"] != "compare":
            continue
        task = task_label(job)
        dense = "dense_vae" if task == "unsupervised" else "dense_mlp"
        pairs = [("sparse_overhead", "sdlgm_pyro", dense,
                  targets["sparse_overhead"] if task == "unsupervised" else None),
                 ("pyro_overhead", "sdlgm_pyro", "sdlgm_torch", targets["pyro_overhead"]),
                 ("pyro_overhead_validated_step", "sdlgm_pyro_validated", "sdlgm_torch", None),
                 ("sparse_overhead_joint_layout", "sdlgm_pyro_joint", dense, None),
                 ("sparse_overhead_library_defaults", "sdlgm_pyro_defaults", dense, None),
                 ("joint_layout_speedup", "sdlgm_pyro", "sdlgm_pyro_joint", None),
                 ("pyro_overhead_joint_layout", "sdlgm_pyro_joint", "sdlgm_torch_joint", targets["pyro_overhead"]),
                 ("sparse_machinery_in_torch", "sdlgm_torch", dense, None)]
        for name, num, den, target in pairs:
            if result["status"] == "ok" and (num not in result["variants"] or den not in result["variants"]):
                continue  # a pair this task's compare job does not time (the defaults: unsupervised only)
            row = {"task": task, "ratio": name, "numerator": num, "denominator": den, "K": job["K"], "L0": job["L0"],
                   "batch": job["batch"], "target": target}
            if result["status"] != "ok":
                row.update(value=math.nan, verdict=f"not measured: {result.get('error', '')[:200]}")
            else:
                v = result["variants"]
                value = v[num]["median_step_s"] / v[den]["median_step_s"]
                per_round = [r[num] / r[den] for r in result.get("round_ratios", [])]
                row.update(value=value, numerator_ms=v[num]["median_step_s"] * 1e3,
                           denominator_ms=v[den]["median_step_s"] * 1e3,
                           round_min=min(per_round) if per_round else math.nan,
                           round_max=max(per_round) if per_round else math.nan,
                           rounds=len(per_round), verdict=verdict_ratio(value, target))
            out.append(row)
    return out


def memory_linearity(rows: list[dict], device: str) -> list[dict]:
    """How peak memory grows in each task/mode of the grid.

    At the largest ``K`` where at least two ``L0`` ran, ``exponent = log(m(L0_max) / m(L0_min)) /
    log(L0_max / L0_min)``: about 1 when memory grows as ``K x L0``, about 0 when it is linear in
    ``K`` alone. Also a least-squares fit ``m = a + b K + c K L0`` over every cell that ran.
    """
    out = []
    groups = sorted({(r["task"], r["mode"]) for r in rows if r["section"] == "grid"}, key=_group_key)
    for task, mode in groups:
        cells = [r for r in rows if r["section"] == "grid" and (r["task"], r["mode"]) == (task, mode)
                 and r["status"] == "ok" and math.isfinite(step_memory_gb(r, device))]
        in_group = [r for r in rows if r["section"] == "grid" and (r["task"], r["mode"]) == (task, mode)]
        entry = {"task": task, "mode": mode, "cells_run": len(cells),
                 "cells_not_run": sum(1 for r in in_group if r["status"] != "ok")}
        by_k = {}
        for r in cells:
            by_k.setdefault(r["K"], []).append(r)
        usable = [k for k, rs in by_k.items() if len({r["L0"] for r in rs}) >= 2]
        if usable:
            k = max(usable)
            lo = min(by_k[k], key=lambda r: r["L0"])
            hi = max(by_k[k], key=lambda r: r["L0"])
            m_lo, m_hi = step_memory_gb(lo, device), step_memory_gb(hi, device)
            ratio = m_hi / m_lo if m_lo > 0 else math.nan
            exponent = math.log(ratio) / math.log(hi["L0"] / lo["L0"]) if ratio > 0 else math.nan
            entry.update(at_K=k, L0_low=lo["L0"], L0_high=hi["L0"], memory_low_gb=m_lo, memory_high_gb=m_hi,
                         ratio=ratio, ratio_if_K_times_L0=hi["L0"] / lo["L0"], exponent=exponent)
            if not math.isfinite(exponent):
                entry["verdict"] = (f"cannot tell: at K={k:,} the memory figures are {m_lo:.3g} GB (L0 {lo['L0']}) "
                                    f"and {m_hi:.3g} GB (L0 {hi['L0']}); a zero means the process peaked before "
                                    "the networks were built")
            elif exponent >= 0.7:
                entry["verdict"] = (f"grows as K x L0: at K={k:,}, L0 {lo['L0']} -> {hi['L0']} multiplies memory by "
                                    f"{ratio:.1f} (K x L0 would give {hi['L0'] / lo['L0']:.0f}; linear in K, 1)")
            elif exponent <= 0.3:
                entry["verdict"] = (f"linear in K (L0 adds little): at K={k:,}, L0 {lo['L0']} -> {hi['L0']} multiplies "
                                    f"memory by {ratio:.2f}")
            else:
                entry["verdict"] = (f"partly K x L0: at K={k:,}, L0 {lo['L0']} -> {hi['L0']} multiplies memory by "
                                    f"{ratio:.1f} (K x L0 would give {hi['L0'] / lo['L0']:.0f})")
        else:
            entry["verdict"] = "not enough cells ran to tell"
        if len(cells) >= 4:
            A = np.array([[1.0, r["K"], r["K"] * r["L0"]] for r in cells])
            m = np.array([step_memory_gb(r, device) for r in cells]) * GIB
            if np.linalg.matrix_rank(A) == 3:
                (a, b, c), *_ = np.linalg.lstsq(A, m, rcond=None)
                biggest = max(cells, key=lambda r: r["K"] * r["L0"])
                kl_term, k_term = c * biggest["K"] * biggest["L0"], b * biggest["K"]
                share = float(kl_term / (kl_term + k_term)) if kl_term + k_term else math.nan
                entry.update(fit_bytes_constant=float(a), fit_bytes_per_K=float(b), fit_bytes_per_K_L0=float(c),
                             fit_K_L0_share_at_largest=share)
        out.append(entry)
    return out


def target_rows(rows: list[dict], targets: dict, device: str) -> list[dict]:
    out = []
    limit = targets["memory_gb"]
    for r in rows:
        if r["section"] != "target":
            continue
        entry = dict(r)
        if r["status"] == "ok":
            peak = r["cuda_peak_gb"] if device == "cuda" else r["peak_rss_gb"]
            entry["peak_gb"] = peak
            what = "GPU peak allocated" if device == "cuda" else "peak RSS"
            if peak <= limit:
                entry["verdict"] = f"met: {what} {peak:.2f} GB <= {limit:g} GB"
            else:
                entry["verdict"] = f"MISSED by {peak / limit:.2f}x: {what} {peak:.2f} GB > {limit:g} GB"
            if device == "cuda":
                entry["verdict"] += " (the target is stated for CPU; this run was on cuda)"
        elif r["status"] == "not run" and math.isfinite(r["estimate_gb"]):
            est = r["estimate_gb"]
            entry["verdict"] = (f"MISSED (not run): the library estimates {est:.1f} GB, {est / limit:.1f}x the "
                                f"{limit:g} GB target" if est > limit else
                                f"{r['note']}; the library estimates {est:.2f} GB <= {limit:g} GB")
        elif r["status"] == "stopped" and r.get("watched_peak_gb", 0) > limit:
            seen = r["watched_peak_gb"]
            entry["verdict"] = (f"MISSED by at least {seen / limit:.2f}x (stopped): resident memory reached "
                                f"{seen:.2f} GB > {limit:g} GB before the cell was stopped ({r['note']})")
        else:
            entry["verdict"] = f"not measured: {r['note']}"
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- writing


def _fmt(value, spec=".3g", empty="") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return empty
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k), ".6g") for k in CSV_COLUMNS})


def headline_rows(results: list[dict], device: str) -> list[dict]:
    out = []
    for result in results:
        job = result["job"]
        if job["section"] != "headline":
            continue
        (variant,) = job["variants"]
        row = {"task": task_label(job), "variant": variant, "K": job["K"], "L0": job["L0"], "batch": job["batch"],
               "status": result["status"], "note": result.get("error", "")}
        if result["status"] == "ok":
            t = result["variants"][variant]
            row.update(median_step_ms=t["median_step_s"] * 1e3, mean_step_ms=t["mean_step_s"] * 1e3,
                       examples_per_s=t["examples_per_s"], steps=t["steps"],
                       parameters=result["parameters"][variant], **memory_of(result))
        out.append(row)
    return out


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [r for r in rows if r["section"] == "grid"]
    groups = sorted({(r["task"], r["mode"]) for r in grid}, key=_group_key)
    if not groups:
        return
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7.5), squeeze=False)
    mem_label = "GPU peak allocated (GB)" if device == "cuda" else "peak RSS increase (GB)"
    for col, (task, mode) in enumerate(groups):
        cells = [r for r in grid if (r["task"], r["mode"]) == (task, mode)]
        for L0 in sorted({r["L0"] for r in cells}):
            ok = sorted((r for r in cells if r["L0"] == L0 and r["status"] == "ok"), key=lambda r: r["K"])
            if ok:
                axes[0][col].plot([r["K"] for r in ok], [r["median_step_ms"] for r in ok], "o-", label=f"L0={L0}")
                positive = [r for r in ok if step_memory_gb(r, device) > 0]  # log axis
                axes[1][col].plot([r["K"] for r in positive], [step_memory_gb(r, device) for r in positive], "o-",
                                  label=f"L0={L0}")
        skipped = [r for r in cells if r["status"] != "ok"]
        axes[0][col].set_title(f"{task}: {mode}\n({len(skipped)} of {len(cells)} cells not run)", fontsize=10)
        for row, label in ((0, "median step time (ms)"), (1, mem_label)):
            ax = axes[row][col]
            ax.set_xscale("log")
            if any(y > 0 for line in ax.lines for y in line.get_ydata()):
                ax.set_yscale("log")
            ax.set_xlabel("K")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_table(rows: list[dict], task: str, mode: str, device: str) -> list[str]:
    cells = [r for r in rows if r["section"] == "grid" and (r["task"], r["mode"]) == (task, mode)]
    l0s = sorted({r["L0"] for r in cells})
    lines = ["| K | " + " | ".join(f"L0 = {L0}" for L0 in l0s) + " |", "|---:|" + "---|" * len(l0s)]
    for K in sorted({r["K"] for r in cells}):
        parts = []
        for L0 in l0s:
            match = [r for r in cells if r["K"] == K and r["L0"] == L0]
            if not match:
                parts.append("-")
                continue
            r = match[0]
            if r["status"] == "ok":
                parts.append(f"{r['median_step_ms']:.0f} ms, {step_memory_gb(r, device):.2f} GB "
                             f"(est. {r['estimate_gb']:.2f})")
            elif r["status"] == "not run" and math.isfinite(r["estimate_gb"]):
                parts.append(f"not run: estimated {r['estimate_gb']:.1f} GB")
            else:
                parts.append(f"{r['status']}: {r['note'][:80]}")
        lines.append(f"| {K:,} | " + " | ".join(parts) + " |")
    return lines


def summary_markdown(machine: dict, run: dict, heads: list[dict], ratio_rows: list[dict], rows: list[dict],
                     linearity: list[dict], targets: list[dict]) -> str:
    device = machine["device"]
    mem_word = "GPU peak allocated" if device == "cuda" else "peak RSS"
    L = ["# SDLGM benchmark", ""]
    L.append(f"Command: `{run['command']}`; wall time {run['wall_seconds'] / 60:.1f} min"
             + ("; **quick (smoke) settings**" if run["quick"] else "")
             + ("; **in-process (memory figures not clean)**" if run["in_process"] else "") + ".")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- CPU: {machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, "
             f"{machine['cpus_available_to_process']} available), RAM {machine['ram_total_gb']} GB")
    L.append(f"- device: {device} ({machine['device_name']}); torch threads {machine['torch_threads']}")
    L.append(f"- {machine['os']}; Python {machine['python']}, torch {machine['torch']}, pyro-ppl {machine['pyro']}, "
             f"numpy {machine['numpy']}")
    L.append(f"- load average at start {machine['load_average_at_start']}, at end {machine['load_average_at_end']}; "
             f"git {machine['git_commit']}" + (" (with uncommitted changes)" if machine["git_tracked_changes"] else ""))
    L.append("")
    L.append("## Headline" + ("" if run["in_process"] else " (one fresh process per row)"))
    L.append("")
    L.append(f"| task | variant | K | L0 | batch | median step (ms) | mean step (ms) | examples/s | {mem_word} (GB) "
             "| increase (GB) | parameters |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for h in heads:
        if h["status"] != "ok":
            L.append(f"| {h['task']} | {VARIANT_LABELS[h['variant']]} | {h['K']} | {h['L0']} | {h['batch']} | "
                     f"{h['status']}: {h['note'][:100]} | | | | | |")
            continue
        peak = h["cuda_peak_gb"] if device == "cuda" else h["peak_rss_gb"]
        inc = h["cuda_increase_gb"] if device == "cuda" else h["peak_increase_gb"]
        L.append(f"| {h['task']} | {VARIANT_LABELS[h['variant']]} | {h['K']} | {h['L0']} | {h['batch']} | "
                 f"{h['median_step_ms']:.1f} | {h['mean_step_ms']:.1f} | {h['examples_per_s']:.0f} | {peak:.3f} | "
                 f"{inc:.3f} | {h['parameters']:,} |")
    L.append("")
    L.append("## Ratios (median step times, variants interleaved in one process)")
    L.append("")
    L.append("| task | ratio | K | L0 | batch | value | per-round range | verdict |")
    L.append("|---|---|---:|---:|---:|---:|---|---|")
    for r in ratio_rows:
        label = f"{VARIANT_LABELS[r['numerator']]} / {VARIANT_LABELS[r['denominator']]}"
        rng = (f"{r['round_min']:.2f}-{r['round_max']:.2f} ({r['rounds']} rounds)"
               if math.isfinite(r.get("round_min", math.nan)) else "")
        L.append(f"| {r['task']} | {label} | {r['K']} | {r['L0']} | {r['batch']} | {_fmt(r['value'], '.2f')} | {rng} | "
                 f"{r['verdict']} |")
    L.append("")
    L.append(f"## Scaling (batch {run['settings']['grid_batch']}; median step time, "
             f"{'GPU peak allocated' if device == 'cuda' else 'peak RSS increase over the process before the networks'}"
             f", and the library's estimate; cap {run['memory_cap_gb']:.1f} GB)")
    for task, mode in sorted({(r["task"], r["mode"]) for r in rows if r["section"] == "grid"}, key=_group_key):
        L.append("")
        cand = ""
        if mode == "shortlist":
            cand = f" ({run['candidates_rule']})"
        L.append(f"### {task}: {mode}{cand}")
        L.append("")
        L.extend(scaling_table(rows, task, mode, device))
    L.append("")
    L.append("## Memory: linear in K, or K x L0?")
    L.append("")
    for e in linearity:
        line = f"- **{e['task']}: {e['mode']}**: {e['verdict']}"
        if "fit_K_L0_share_at_largest" in e:
            line += (f"; least-squares fit over {e['cells_run']} cells: {e['fit_bytes_per_K'] / 2**10:.1f} KiB per K "
                     f"+ {e['fit_bytes_per_K_L0'] / 2**10:.1f} KiB per K x L0 (the K x L0 term is "
                     f"{100 * e['fit_K_L0_share_at_largest']:.0f}% of the K-dependent memory at the largest cell)")
        L.append(line + ".")
    L.append("")
    L.append(f"## Target: K = {run['target_cell']['K']:,}, L0 = {run['target_cell']['L0']}, batch "
             f"{run['target_cell']['batch']} within {run['targets']['memory_gb']:g} GB")
    L.append("")
    for t in targets:
        cand = f", C = {t['candidates']}" if t.get("candidates") else ""
        L.append(f"- {t['task']}: {t['mode']}{cand}: {t['verdict']}"
                 + (f"; median step {t['median_step_ms']:.0f} ms" if t["status"] == "ok" else ""))
    L.append("")
    return "\n".join(L)


def write_all(out: Path, machine: dict, run: dict, results: list[dict]) -> str:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = machine["device"]
    rows = scaling_rows(results)
    heads = headline_rows(results, device)
    ratio_rows = ratios(results, run["targets"])
    linearity = memory_linearity(rows, device)
    targets = target_rows(rows, run["targets"], device)
    summary = summary_markdown(machine, run, heads, ratio_rows, rows, linearity, targets)
    for result in results:  # the logs of failed workers can be long; keep the tail
        if "traceback" in result:
            result["traceback"] = result["traceback"][-2000:]
    payload = {"machine": machine, "run": run, "headline": heads, "ratios": ratio_rows, "scaling": rows,
               "memory_linearity": linearity, "targets": targets, "jobs": results}
    (out / "results.json").write_text(json.dumps(_finite(payload), indent=1, default=_json_default, allow_nan=False)
                                      + "\n")
    write_csv(rows, out / "scaling.csv")
    (out / "summary.md").write_text(summary)
    plot(rows, out / "scaling.png", device)
    return summary


def _finite(value):
    """NaN and infinities as None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
