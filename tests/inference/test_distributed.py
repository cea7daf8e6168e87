"""Data-parallel training: 2 CPU processes (gloo, loopback) against one process on the same global batches."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_sdlgm.inference import distributed
from pyro_sdlgm.exceptions import ConfigError

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
TIMEOUT = 180  # seconds; a hung collective fails the test instead of hanging CI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2`` on loopback (``python -m torch.distributed.run`` is torchrun)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", *map(str, args)]
    done = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def alone(*args, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=environment(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def results(prefix: Path, ranks=(0,)) -> list[dict]:
    return [torch.load(f"{prefix}.{rank}.pt", weights_only=True) for rank in ranks]


def assert_same_parameters(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0.0, msg=name)


# -- the split of global batches (no processes) ------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(size=st.integers(1, 40), world=st.integers(1, 5))
def test_local_rows_partition_each_global_batch(size, world):
    rows = torch.randperm(size, generator=torch.Generator().manual_seed(size)) + 100
    parts = [distributed.local_rows(rows, distributed.Replicas(rank, world)) for rank in range(world)]
    used = torch.cat([part for part, share in parts if share > 0])
    assert sorted(used.tolist()) == sorted(rows.tolist())  # every row once, none twice
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    for part, share in parts:  # a rank left without a row computes on one row with weight 0
        assert len(part) >= 1 and (share > 0 or (len(part) == 1 and size < world))


def test_rank_loss_weights_average_to_the_single_process_loss():
    # R ranks with B_r rows each: (1/R) sum_r weight_r * (N / B_r) * sum_r  ==  (N / B) * sum_all / N
    n, batch, world = 1000, 10, 3
    shares = [4 / batch, 3 / batch, 3 / batch]
    sums = [2.0, 5.0, 7.0]
    averaged = sum(distributed.rank_loss_weight(share, distributed.Replicas(r, world), n) * (n / (share * batch)) * s
                   for r, (share, s) in enumerate(zip(shares, sums))) / world
    assert averaged == pytest.approx(sum(sums) / batch)


def test_divergence_check_is_exact_and_takes_nan_as_equal():
    nan = float("nan")
    rank0 = torch.tensor([1.0, 2.0, nan, nan, 5.0, 6.0], dtype=torch.float64)
    assert distributed.first_divergence([rank0, rank0.clone()], ["a", "b", "c"]) is None
    off = rank0.clone()
    off[5] = torch.nextafter(off[5], torch.tensor(7.0, dtype=torch.float64))  # one ulp
    assert distributed.first_divergence([rank0, rank0.clone(), off], ["a", "b", "c"]) == (2, "c")
    off = rank0.clone()
    off[2] = 0.0  # a NaN on one rank only is a difference
    assert distributed.first_divergence([rank0, off], ["a", "b", "c"]) == (1, "b")


def test_bad_launch_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        distributed.launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        with distributed.process_group("cpu"):
            pass


def test_single_process_is_rank_zero_of_one():
    replicas = distributed.current()
    assert (replicas.rank, replicas.world_size, replicas.is_main, replicas.distributed) == (0, 1, True, False)
    assert replicas.sum([1.5, 2]) == [1.5, 2.0] and not replicas.any(False)
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda") == "nccl"


# -- two processes ----------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [25, 21])  # 21 rows, batch 10: the last global batch has 1 row, rank 1 none
def test_two_processes_match_one_on_the_same_global_batches(tmp_path, rows):
    """A model without latent variables has a deterministic ELBO, so data-parallel training must
    reproduce the single process up to float summation order."""
    alone(WORKER, "toy", tmp_path / "one", "--rows", rows, cwd=tmp_path)
    torchrun(WORKER, "toy", tmp_path / "two", "--rows", rows, cwd=tmp_path)
    (one,) = results(tmp_path / "one")
    rank0, rank1 = results(tmp_path / "two", (0, 1))
    assert_same_parameters(rank0["state"], rank1["state"])  # identical across ranks, bit for bit
    assert_same_parameters(one["state"], rank0["state"], atol=1e-6)
    for single, parallel in zip(one["history"], rank0["history"], strict=True):
        assert parallel["train_loss"] == pytest.approx(single["train_loss"], rel=1e-6)  # averaged over ranks
        assert parallel["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)
    # every rank logs the same loss: the average over all ranks' rows
    assert [r["train_loss"] for r in rank0["history"]] == [r["train_loss"] for r in rank1["history"]]


def test_a_fault_on_one_rank_is_skipped_by_every_rank(tmp_path):
    # row 3 holds a NaN, so one rank's loss is NaN in one batch per epoch; with validation off
    # the fault is a NaN loss (not a ValueError) and the other rank must skip that step too
    args = ("toy", "--nan-row", 3, "--nan-policy", "skip_batch", "--no-validation")
    alone(WORKER, args[0], tmp_path / "one", *args[1:], cwd=tmp_path)
    torchrun(WORKER, args[0], tmp_path / "two", *args[1:], cwd=tmp_path)
    (one,) = results(tmp_path / "one")
    rank0, rank1 = results(tmp_path / "two", (0, 1))
    assert [r["skipped_batches"] for r in rank0["history"]] == [1, 1, 1]
    assert [r["skipped_batches"] for r in rank1["history"]] == [1, 1, 1]
    assert_same_parameters(rank0["state"], rank1["state"])
    assert_same_parameters(one["state"], rank0["state"], atol=1e-6)


def test_a_fault_with_nan_policy_stop_stops_every_rank(tmp_path):
    done = torchrun(WORKER, "toy", tmp_path / "two", "--nan-row", 3, "--no-validation", cwd=tmp_path, check=False)
    assert done.returncode != 0  # and no rank hangs waiting for the other (the timeout would fail)
    assert "NumericalError" in done.stderr and "a fault on another data-parallel rank" in done.stderr
    assert not list(tmp_path.glob("two.*.pt"))


def test_multilabel_classifier_trains_data_parallel(tmp_path):
    alone(WORKER, "classifier", tmp_path / "one", "--rows", 60, "--batch", 16, cwd=tmp_path)
    torchrun(WORKER, "classifier", tmp_path / "two", "--rows", 60, "--batch", 16, cwd=tmp_path)
    (one,) = results(tmp_path / "one")
    rank0, rank1 = results(tmp_path / "two", (0, 1))
    assert_same_parameters(rank0["state"], rank1["state"])
    assert [r["step"] for r in rank0["history"]] == [r["step"] for r in one["history"]]  # same global batches
    # the ranks draw other Gumbel noise than the single process: close, not equal
    assert rank0["history"][-1]["val_loss"] == pytest.approx(one["history"][-1]["val_loss"], rel=0.15)


TINY_RUN = """
[data]
source = "digits"
[model]
latent_dim = 20
max_sparsity = 4
[training]
epochs = 3
batch_size = 64
device = "cpu"
progress = false
"""


def test_torchrun_sdlgm_train_writes_one_run_folder_and_resumes(tmp_path):
    (tmp_path / "run.toml").write_text(TINY_RUN)
    single = alone("-m", "pyro_sdlgm", "train", "--config", "run.toml", "--run-dir", "one", cwd=tmp_path)
    done = torchrun("-m", "pyro_sdlgm", "train", "--config", "run.toml", "--run-dir", "two", cwd=tmp_path)
    assert done.stdout.count("run folder:") == 1 and "2 data-parallel processes" in done.stdout  # rank 0 prints
    assert "run folder:" in single.stdout
    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == [".lock", "checkpoints", "config.yaml", "evaluation.json",
                                                    "metrics.jsonl", "model.pt", "plots"]
    history = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [r["step"] for r in reference] == [23, 46, 69]  # 23 global batches of 64 per epoch
    assert history[-1]["val_loss"] == pytest.approx(reference[-1]["val_loss"], rel=0.03)
    metrics = json.loads((two / "evaluation.json").read_text())
    expected = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    assert metrics["elbo"] == pytest.approx(expected["elbo"], rel=0.03)

    # a crash after epoch 2: the folder without its last checkpoint and evaluation, resumed by 2 processes
    crashed = tmp_path / "crashed"
    shutil.copytree(two, crashed)
    for name in ("checkpoints/epoch_000003.pt", "model.pt", "evaluation.json"):
        (crashed / name).unlink()
    done = torchrun("-m", "pyro_sdlgm", "train", "--resume", "crashed", cwd=tmp_path)
    resumed = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == [1, 2, 3] and resumed[:2] == history[:2]
    assert (crashed / "model.pt").is_file() and (crashed / "checkpoints" / "epoch_000003.pt").is_file()


def test_gpu_options_that_cannot_work_data_parallel_are_named(monkeypatch):
    from pyro_sdlgm.inference.distributed import resolve_device

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="NCCL on GPUs, but CUDA is not available"):
        with distributed.process_group("cuda"):
            pass
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Replicas(1, 2, 1))
    with pytest.raises(ConfigError, match="would put every rank on one GPU"):
        resolve_device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda", 1)
