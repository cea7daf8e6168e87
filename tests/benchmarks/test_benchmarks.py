"""The benchmark suite (benchmarks/): its PyTorch reference equals the Pyro loss, and a quick run writes
well-formed results. The benchmark itself is not part of the test run (``make bench``)."""

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_sdlgm import SDLGMClassifier
from pyro_sdlgm import ModelConfig
from pyro_sdlgm.estimators.sdlgm import build_model_and_guide
from pyro_sdlgm.inference.trainer import make_elbo

from benchmarks import torch_reference

REPO = Path(__file__).resolve().parents[2]

SCHEDULE = dict(num_data=100, tau_sparsity=0.7, tau_support=0.6, kl_weight=0.8)


def _loss_and_grads(loss_of, modules, seed):
    for module in modules:
        module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of()
    loss.backward()
    grads = {f"{i}.{name}": p.grad.clone() for i, m in enumerate(modules) for name, p in m.named_parameters()
             if p.grad is not None}
    return loss.detach(), grads


def _assert_same(pyro_result, torch_result):
    (loss_p, grads_p), (loss_t, grads_t) = pyro_result, torch_result
    torch.testing.assert_close(loss_t, loss_p, rtol=1e-5, atol=0)
    assert grads_p.keys() == grads_t.keys() and grads_p
    for name in grads_p:
        scale = grads_p[name].abs().max().clamp(min=1e-12)
        assert (grads_t[name] - grads_p[name]).abs().max() / scale < 1e-5, name


@pytest.mark.parametrize("guide, layout", [("mlp_per_slot", "per_slot"), ("mlp_shared_slots", "per_slot"),
                                           ("mlp_per_slot", "joint")])
def test_torch_reference_equals_pyro_loss_unsupervised(guide, layout):
    torch.manual_seed(0)
    model, g = build_model_and_guide(ModelConfig(input_dim=20, latent_dim=30, max_sparsity=5, slot_layout=layout,
                                                 guide={"name": guide, "hidden": [16]}, decoder_hidden=(16,)))
    x = (torch.rand(8, 20) > 0.5).float()
    with pyro.settings.context(module_local_params=True):
        loss_fn = make_elbo(model.spec)(model, g)
        pyro_result = _loss_and_grads(lambda: loss_fn(x, **SCHEDULE) / 100, [model, g], seed=3)
    torch_result = _loss_and_grads(lambda: torch_reference.unsupervised_loss(model, g, x, **SCHEDULE) / 100,
                                   [model, g], seed=3)
    _assert_same(pyro_result, torch_result)
    # a different seed draws different samples: the agreement is not a coincidence of constants
    other = _loss_and_grads(lambda: torch_reference.unsupervised_loss(model, g, x, **SCHEDULE) / 100, [model, g], 4)
    assert not torch.isclose(other[0], torch_result[0], rtol=1e-4)


@pytest.mark.parametrize("per_slot, layout", [(True, "per_slot"), (False, "per_slot"), (True, "joint")])
def test_torch_reference_equals_pyro_loss_multilabel(per_slot, layout):
    torch.manual_seed(0)
    clf = SDLGMClassifier(40, 5, input_dim=20, per_slot=per_slot, hidden=[16], slot_layout=layout,
                          fit_objective="elbo", dropout=0.0)
    model, g = clf._networks(clf.config)
    x = torch.randn(8, 20)
    y = torch.zeros(8, 40)
    y[torch.arange(8), torch.randint(0, 40, (8,))] = 1.0
    y[:4, 0] = 1.0
    with pyro.settings.context(module_local_params=True):
        loss_fn = make_elbo(model.spec)(model, g)
        pyro_result = _loss_and_grads(lambda: loss_fn(x, y, **SCHEDULE) / 100, [model, g], seed=5)
    torch_result = _loss_and_grads(lambda: torch_reference.multilabel_loss(model, g, x, y, **SCHEDULE) / 100,
                                   [model, g], seed=5)
    _assert_same(pyro_result, torch_result)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_quick_benchmark_writes_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--in-process", "--threads", "1",
                           "--device", "cpu", "--out", str(out), "--log-level", "WARNING"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# SDLGM benchmark" in proc.stdout
    for name in ("results.json", "scaling.csv", "summary.md", "scaling.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = _strict_json(out / "results.json")
    machine = results["machine"]
    for key in ("cpu_model", "logical_cpus", "ram_total_gb", "os", "python", "torch", "pyro", "torch_threads",
                "device", "device_name"):
        assert key in machine, key
    assert machine["device"] == "cpu" and machine["torch_threads"] == 1
    # every headline measurement and ratio ran
    assert {(h["task"], h["variant"]) for h in results["headline"] if h["status"] == "ok"} == {
        (task, variant) for task, dense in (("unsupervised", "dense_vae"), ("multilabel", "dense_mlp"))
        for variant in ("sdlgm_pyro", "sdlgm_pyro_joint", "sdlgm_torch", dense)} | {
        ("unsupervised", "sdlgm_pyro_defaults"), ("multilabel (set bound)", "sdlgm_pyro")}
    targeted = {(r["task"], r["ratio"]): r for r in results["ratios"]}
    assert targeted[("unsupervised", "sparse_overhead")]["target"] == 1.5
    assert targeted[("unsupervised", "pyro_overhead")]["target"] == 1.3
    assert all(r["value"] > 0 for r in results["ratios"])
    assert ("unsupervised", "sparse_overhead_library_defaults") in targeted
    assert ("multilabel", "sparse_overhead_library_defaults") not in targeted
    assert ("multilabel (set bound)", "sparse_overhead") in targeted
    # the grid: 2 K x 2 L0 per mode, plus the target cell (estimated only in --quick)
    with (out / "scaling.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    grid = [r for r in rows if r["section"] == "grid"]
    full_modes = [r for r in grid if r["mode"] in ("per_slot", "shared", "set_bound")]
    assert len(full_modes) == 16 and all(r["status"] == "ok" for r in full_modes)
    assert all(float(r["median_step_ms"]) > 0 and float(r["peak_rss_gb"]) > 0 for r in full_modes)
    targets = [r for r in rows if r["section"] == "target"]
    assert {r["K"] for r in targets} == {"100000"} and all(r["status"] != "ok" for r in targets)
    assert all(float(r["estimate_gb"]) > 4 for r in targets if r["mode"] not in ("shortlist", "set_bound"))
    assert len(results["memory_linearity"]) == len({(r["task"], r["mode"]) for r in grid})
    summary = (out / "summary.md").read_text()
    for heading in ("## Machine", "## Headline", "## Ratios", "## Scaling", "## Memory", "## Target"):
        assert heading in summary


def test_worker_runs_in_a_fresh_process_and_the_watchdog_stops_it(tmp_path):
    from benchmarks import run

    job = dict(section="grid", task="unsupervised", mode="per_slot", K=16, L0=2, batch=8, kind="measure",
               variants=["sdlgm_pyro"], input_dim=12, num_data=32, density=0.05, seed=0, device="cpu", threads=1,
               warmup=1, steps=2, max_seconds=5.0, min_steps=1)
    result = run.Runner(tmp_path, in_process=False, hard_limit_bytes=2**40, min_available_bytes=0)(job, 120)
    assert result["status"] == "ok", result.get("error")
    assert result["torch_threads"] == 1 and result["variants"]["sdlgm_pyro"]["steps"] == 2
    memory = result["memory"]
    assert memory["peak_rss_bytes"] >= memory["rss_before_networks_bytes"] > 0
    stopped = run.Runner(tmp_path, in_process=False, hard_limit_bytes=2**20, min_available_bytes=0)(job, 120)
    assert stopped["status"] == "stopped" and "hard limit" in stopped["error"]


def test_configurations_over_the_memory_cap_are_not_run(tmp_path):
    from benchmarks import run

    args = argparse.Namespace(quick=True, grid_K=None, grid_L0=None, seed=0, candidates_per_slot=4, min_candidates=64,
                              modes="unsupervised:per_slot,multilabel:shared")
    jobs = [j for j in run.plan(args, run.settings(args), torch.device("cpu"), 1) if j["section"] == "grid"]

    def refuse(job, timeout):
        raise AssertionError("no job may run above the cap")

    results = run.execute(jobs, refuse, cap_bytes=1)
    assert results and all(r["status"] == "not run" and r["estimate"]["total_bytes"] > 1 for r in results)
    assert all("not run: estimated" in r["error"] for r in results)


def test_report_verdicts_on_near_misses_stopped_targets_and_zero_memory():
    from benchmarks import report

    assert report.verdict_ratio(1.3049, 1.3).startswith("MISSED by 1.004x") and "+0.4% over" in report.verdict_ratio(
        1.3049, 1.3)
    assert report.verdict_ratio(1.3, 1.3).startswith("met")
    stopped = {"section": "target", "status": "stopped", "estimate_gb": 3.0, "watched_peak_gb": 6.0,
               "note": "stopped: resident memory 6.00 GB passed the hard limit"}
    (verdict,) = report.target_rows([stopped], {"memory_gb": 4.0}, "cpu")
    assert verdict["verdict"].startswith("MISSED by at least 1.50x (stopped)")
    timed_out = dict(stopped, watched_peak_gb=1.0, note="stopped: ran past 600 s")
    (verdict,) = report.target_rows([timed_out], {"memory_gb": 4.0}, "cpu")
    assert verdict["verdict"].startswith("not measured")
    cells = [{"section": "grid", "task": "unsupervised", "mode": "per_slot", "K": 200, "L0": L0, "status": "ok",
              "peak_increase_gb": 0.0} for L0 in (5, 50)]
    (linearity,) = report.memory_linearity(cells, "cpu")
    assert linearity["verdict"].startswith("cannot tell") and "nan" not in linearity["verdict"]
