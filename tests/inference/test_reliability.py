"""Reliability: checkpoints and resume (also after SIGKILL), numerical faults, safe loading."""

import json
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pyro
import pytest
import torch

from pyro_sdlgm import (
    SDLGM,
    CheckpointError,
    ConfigError,
    NumericalError,
    SDLGMClassifier,
    TrainConfig,
)
from pyro_sdlgm.inference.checkpoint import TRAINING_FORMAT, list_checkpoints, load_checkpoint
from conftest import multilabel_run_config
from pyro_sdlgm.app.cli import main
from pyro_sdlgm.inference.trainer import Trainer

# codes with values (binary="auto" would make them binary for this Bernoulli data)
SMALL = dict(latent_dim=8, max_sparsity=3, decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]},
             binary=False)
QUICK = dict(batch_size=32, learning_rate=1e-2, anneal_fraction=0.2, kl_warmup_fraction=0.2, progress=False, seed=0)
PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pyro_sdlgm"


def losses(history):
    return [(r["train_loss"], r.get("val_loss")) for r in history]


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def metrics_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_states(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def simulate_crash(run_dir, copy_to, keep_epoch):
    """A copy of a finished run folder as a crash after epoch ``keep_epoch``'s checkpoint left it:
    later checkpoints and the model gone, metrics.jsonl with lines past the checkpoint and a torn one."""
    shutil.copytree(run_dir, copy_to)
    for epoch, path in list_checkpoints(copy_to / "checkpoints"):
        if epoch > keep_epoch:
            path.unlink()
    (copy_to / "model.pt").unlink(missing_ok=True)
    (copy_to / "checkpoints" / ".epoch_000099.pt.abc.tmp").write_bytes(b"partial")
    with (copy_to / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 99, "train_lo')
    return copy_to


# ----------------------------------------------------------------------------- checkpoints and resume


def test_checkpoints_are_weights_only_complete_and_pruned(binary_data, tmp_path):
    model = SDLGM(input_dim=12, **SMALL)
    history = model.fit(binary_data, epochs=5, checkpoint_every=2, keep_checkpoints=2, run_dir=tmp_path, **QUICK).history_
    # every 2 epochs and at the end, the newest 2 kept
    assert [e for e, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 5]
    data = torch.load(tmp_path / "checkpoints" / "epoch_000005.pt", weights_only=True)
    assert data["format"] == TRAINING_FORMAT and data["epoch"] == 5 and data["finished"]
    assert data["step"] == history[-1]["step"] == 5 * 4  # 108 training rows, batches of 32
    assert data["history"] == history
    assert data["train_config"]["checkpoint_every"] == 2 and data["identity"]["model"]["latent_dim"] == 8
    assert set(data["model_state"]) == set(model.model_.state_dict())
    assert data["optimizer_state"]["state"] and data["optimizer_state"]["param_groups"][0]["lr"] == 1e-2
    assert set(data["rng"]) == {"torch", "cuda", "numpy", "python", "batch_order"}
    assert data["rng"]["torch"].dtype == torch.uint8 and data["rng"]["numpy"]["keys"].shape == (624,)
    assert set(data["schedule"]) == {"tau_sparsity", "tau_support", "kl_weight"}
    assert set(data["early_stopping"]) == {"best_val", "best_model_state", "best_guide_state", "stale"}
    assert len(data["data"]["sha256"]) == 64
    # checkpoint_every=0: only at the end
    model.fit(binary_data, epochs=3, checkpoint_every=0, run_dir=tmp_path / "end", **QUICK)
    assert [e for e, _ in list_checkpoints(tmp_path / "end" / "checkpoints")] == [3]


def test_resume_through_fit_equals_an_uninterrupted_fit(binary_data, tmp_path):
    options = dict(epochs=8, checkpoint_every=3, keep_checkpoints=10, patience=3, **QUICK)
    full = SDLGM(input_dim=12, **SMALL)
    expected = full.fit(binary_data, run_dir=tmp_path / "full", **options).history_
    assert any(r["best_epoch"] for r in expected[:3])  # early-stopping state is in the epoch-3 checkpoint
    crashed = simulate_crash(tmp_path / "full", tmp_path / "crashed", keep_epoch=3)
    resumed = SDLGM(input_dim=12, **SMALL)
    history = resumed.fit(binary_data, run_dir=crashed, resume=True, **{**options, "keep_checkpoints": 2}).history_
    assert losses(history) == losses(expected)
    assert history[:3] == expected[:3]  # the checkpointed epochs, timings included
    assert without_seconds(history) == without_seconds(expected)
    assert without_seconds(metrics_lines(crashed)) == without_seconds(expected)
    assert_same_states(resumed.model_, full.model_)
    assert_same_states(resumed.guide_, full.guide_)
    files = sorted(p.name for p in (crashed / "checkpoints").iterdir())
    assert files == ["epoch_000006.pt", "epoch_000008.pt"]  # temporaries removed, keep_checkpoints=2
    # resuming a finished run trains nothing and restores the same (best) parameters
    again = SDLGM(input_dim=12, **SMALL)
    assert again.fit(binary_data, run_dir=crashed, resume=True, **options).history_ == history
    assert_same_states(again.model_, full.model_)


def test_resume_refuses_other_configs_data_and_missing_checkpoints(binary_data, tmp_path):
    options = dict(epochs=2, **QUICK)
    SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path / "run", **options)
    with pytest.raises(ConfigError, match=r"training\.learning_rate: 0\.01 in the checkpoint, 0\.02 now"):
        SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path / "run", resume=True,
                                         **{**options, "learning_rate": 0.02})
    with pytest.raises(ConfigError, match=r"model\.latent_dim: 8 in the checkpoint, 9 now"):
        SDLGM(input_dim=12, **{**SMALL, "latent_dim": 9}).fit(binary_data, run_dir=tmp_path / "run", resume=True,
                                                               **options)
    with pytest.raises(CheckpointError, match="data differ"):
        SDLGM(input_dim=12, **SMALL).fit(1 - binary_data, run_dir=tmp_path / "run", resume=True, **options)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no training checkpoint"):
        SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path / "empty", resume=True, **options)
    with pytest.raises(ConfigError, match="needs the run_dir"):
        SDLGM(input_dim=12, **SMALL).fit(binary_data, resume=True, **options)
    # the remedies the errors suggest may change on resume
    SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path / "run", resume=True,
                                     **{**options, "nan_policy": "skip_batch", "memory_limit_gb": "off"})


def test_a_fresh_fit_never_overwrites_an_earlier_run(binary_data, tmp_path):
    options = dict(epochs=1, **QUICK)
    SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path / "run", **options)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    fitted = SDLGM(input_dim=12, **SMALL)
    fitted.fit(binary_data, **options)
    with pytest.raises(ConfigError, match="earlier run; pass resume=True .* or overwrite=True"):
        fitted.fit(binary_data, run_dir=tmp_path / "run", **options)
    assert fitted.is_fitted  # refused before the fitted model was touched
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=tmp_path / "run", overwrite=True, **options)


def test_new_training_options_are_validated():
    assert TrainConfig().checkpoint_every == 1 and TrainConfig().nan_policy == "stop"
    for key, value in [("checkpoint_every", -1), ("keep_checkpoints", 0), ("nan_policy", "ignore"),
                       ("pyro_validation", "never")]:
        with pytest.raises(ConfigError, match=f"training.{key}"):
            TrainConfig(**{key: value})


def write_digits_config(path, run_dir, epochs):
    path.write_text(f"""
run_dir = {str(run_dir)!r}
[model]
latent_dim = 12
max_sparsity = 3
decoder_hidden = [16]
guide = {{ name = "mlp_per_slot", hidden = [16] }}
[training]
epochs = {epochs}
batch_size = 16
learning_rate = 0.01
anneal_fraction = 0.1
kl_warmup_fraction = 0.1
checkpoint_every = 3
keep_checkpoints = 2
progress = false
[data]
source = "digits"
max_examples = 200
""")
    return path


def test_sigkilled_training_resumes_with_the_losses_of_an_uninterrupted_run(tmp_path, capsys):
    config = write_digits_config(tmp_path / "run.toml", tmp_path / "unused", epochs=20)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pyro_sdlgm", "train", "--config", str(config), "--run-dir",
                             str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # wait for the first checkpoint (after 3 epochs) and a metrics line past it
        while not (list_checkpoints(killed / "checkpoints") and (killed / "metrics.jsonl").is_file()
                   and len((killed / "metrics.jsonl").read_text().splitlines()) >= 4):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        assert proc.poll() is None, "training finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not (killed / "model.pt").exists()  # killed mid-run
    at_kill = list_checkpoints(killed / "checkpoints")
    assert at_kill and at_kill[-1][0] >= 3
    # metrics.jsonl usually runs ahead of the newest checkpoint: resuming drops those lines
    assert len((killed / "metrics.jsonl").read_text().splitlines()) >= at_kill[-1][0]
    for _, path in at_kill:  # never a partial or corrupt checkpoint (a kill inside a write: next test)
        assert load_checkpoint(path, TRAINING_FORMAT)["epoch"] >= 3

    uninterrupted = tmp_path / "uninterrupted"
    assert main(["train", "--config", str(config), "--run-dir", str(uninterrupted)]) == 0
    assert main(["train", "--resume", str(killed)]) == 0
    expected, resumed = metrics_lines(uninterrupted), metrics_lines(killed)
    assert f"trained {len(expected)} epochs" in capsys.readouterr().out
    assert len(expected) > at_kill[-1][0] + 3 and any(r["best_epoch"] for r in expected[:at_kill[-1][0]])
    assert losses(resumed) == losses(expected)  # exactly, on CPU
    assert without_seconds(resumed) == without_seconds(expected)
    assert_same_states(SDLGM.load(killed / "model.pt").model_, SDLGM.load(uninterrupted / "model.pt").model_)
    last = len(expected)  # early stopping may end the run before 20 epochs: the same epoch in both
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert names == [f"epoch_{(last - 1) // 3 * 3:06d}.pt", f"epoch_{last:06d}.pt"]


def test_ctrl_c_exits_130_naming_the_checkpoint_and_resume_says_where_it_continues(tmp_path, capsys):
    config = write_digits_config(tmp_path / "run.toml", tmp_path / "unused", epochs=40)
    run_dir = tmp_path / "interrupted"
    # a shell's background job inherits SIGINT ignored, and Python then installs no Ctrl-C handler
    proc = subprocess.Popen([sys.executable, "-m", "pyro_sdlgm", "train", "--config", str(config), "--run-dir",
                             str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run_dir / "checkpoints"):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    epoch, checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    assert len(lines) == 1 and str(checkpoint) in lines[0] and f"sdlgm train --resume {run_dir}" in lines[0]
    assert main(["train", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"after epoch {epoch} of 40" in out.splitlines()[0]


KILL_INSIDE_SAVE = """
import io, os, signal, sys
import torch
real_save, calls = torch.save, [0]

def dying_save(obj, handle, *args, **kwargs):
    calls[0] += 1
    if calls[0] < {kill_at}:
        return real_save(obj, handle, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half a checkpoint on disk...
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # ...when the process dies

torch.save = dying_save
from pyro_sdlgm.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_checkpoint_and_resume_is_exact(tmp_path, capsys):
    config = write_digits_config(tmp_path / "run.toml", tmp_path / "unused", epochs=9)
    killed = tmp_path / "killed"
    # checkpoints come after epochs 3, 6, 9: the 2nd write (epoch 6) is cut in half by SIGKILL
    proc = subprocess.run([sys.executable, "-c", KILL_INSIDE_SAVE.format(kill_at=2), "train", "--config",
                           str(config), "--run-dir", str(killed)], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert [n for n in names if n.endswith(".pt") and not n.startswith(".")] == ["epoch_000003.pt"]
    assert any(n.startswith(".epoch_000006.pt.") and n.endswith(".tmp") for n in names)  # the torn write
    assert load_checkpoint(killed / "checkpoints" / "epoch_000003.pt", TRAINING_FORMAT)["epoch"] == 3
    assert main(["train", "--resume", str(killed)]) == 0
    assert not any(p.name.endswith(".tmp") for p in (killed / "checkpoints").iterdir())
    uninterrupted = tmp_path / "uninterrupted"
    assert main(["train", "--config", str(config), "--run-dir", str(uninterrupted)]) == 0
    assert without_seconds(metrics_lines(killed)) == without_seconds(metrics_lines(uninterrupted))


def test_multilabel_run_resumes_from_the_command_line(tmp_path, capsys):
    config, _, _ = multilabel_run_config(tmp_path, training="""epochs = 6
batch_size = 32
checkpoint_every = 2
keep_checkpoints = 5
progress = false""")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "full")]) == 0
    crashed = simulate_crash(tmp_path / "full", tmp_path / "crashed", keep_epoch=2)
    assert main(["train", "--resume", str(crashed)]) == 0
    assert "P@1" in capsys.readouterr().out
    assert without_seconds(metrics_lines(crashed)) == without_seconds(metrics_lines(tmp_path / "full"))
    assert_same_states(SDLGMClassifier.load(crashed / "model.pt").model_,
                       SDLGMClassifier.load(tmp_path / "full" / "model.pt").model_)

    # an edited config.yaml no longer matches the checkpoint
    crashed = simulate_crash(tmp_path / "full", tmp_path / "crashed_again", keep_epoch=2)
    text = (crashed / "config.yaml").read_text()
    (crashed / "config.yaml").write_text(text.replace("learning_rate: 0.001", "learning_rate: 0.005"))
    assert main(["train", "--resume", str(crashed)]) == 2
    assert "training.learning_rate: 0.001 in the checkpoint, 0.005 now" in capsys.readouterr().err
    assert main(["train", "--resume", str(crashed), "--config", str(config)]) == 2
    assert "takes no --config" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "full" / "checkpoints")
    (tmp_path / "full" / "evaluation.json").unlink()  # not finished (a finished run has nothing to resume)
    assert main(["train", "--resume", str(tmp_path / "full")]) == 2
    assert "no training checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- numerical faults


class DecoderFault:
    """Forward hook on the decoder: from (or only at) its ``at``-th training call with gradients,
    its output (``kind="loss"``) or its gradient (``kind="gradient"``) becomes NaN."""

    def __init__(self, module, at, kind="loss", persistent=True, params=None):
        self.at, self.kind, self.persistent, self.params = at, kind, persistent, params
        self.calls, self.snapshots = 0, []
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if not module.training:
            return None
        if torch.is_grad_enabled():
            self.calls += 1
            if self.params is not None and self.calls in (self.at, self.at + 1):
                self.snapshots.append([p.detach().clone() for p in self.params])
        active = self.calls == self.at or (self.persistent and self.calls >= self.at)
        if not active:
            return None
        if self.kind == "loss":
            return output * float("nan")
        if torch.is_grad_enabled():
            output.register_hook(lambda grad: grad * float("nan"))
        return None


def test_nan_loss_stops_naming_step_and_site_and_keeps_the_last_checkpoint(binary_data, tmp_path, monkeypatch):
    import pyro_sdlgm.estimators.sdlgm as sdlgm_module

    build = sdlgm_module.build_model_and_guide

    def build_with_fault(config):  # fit() builds fresh modules: put the fault on those
        model, guide = build(config)
        DecoderFault(model.decoder, at=10)  # 4 steps per epoch: the 10th call is step 9, in epoch 2
        return model, guide

    monkeypatch.setattr(sdlgm_module, "build_model_and_guide", build_with_fault)
    model = SDLGM(input_dim=12, **SMALL)
    # Pyro's validation also warns; the error names the step, the site and the last good checkpoint
    with pytest.warns(UserWarning, match="NaN"), pytest.raises(NumericalError) as raised:
        model.fit(binary_data, epochs=5, run_dir=tmp_path, **QUICK)
    message = str(raised.value)
    assert "non-finite loss nan at epoch 3, step 9" in message
    assert "model site 'obs' has a non-finite log-density" in message
    assert "epoch_000002.pt" in message  # the last good checkpoint
    found = list_checkpoints(tmp_path / "checkpoints")
    assert [e for e, _ in found] == [1, 2]
    for _, path in found:
        data = load_checkpoint(path, TRAINING_FORMAT)
        assert all(torch.isfinite(v).all() for v in data["model_state"].values())
    assert len(metrics_lines(tmp_path)) == 2


def test_nan_gradient_stops_naming_the_parameter(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    DecoderFault(model.model_.decoder, at=5, kind="gradient")
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=3, **QUICK))
    with pytest.raises(NumericalError, match=r"non-finite gradient \(norm nan\) at epoch 2, step 4") as raised:
        trainer.fit(torch.as_tensor(binary_data))
    assert "parameter 'model.decoder.net.0.weight' has the first non-finite gradient" in str(raised.value)


def test_invalid_distribution_parameters_are_a_numerical_error(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    model.guide_.encoder.value_head.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=1, **QUICK))
    # Pyro's validation (on in the tests) rejects the NaN location of q(values | x)
    with pytest.raises(NumericalError, match=r"invalid distribution parameters at epoch 1, step 0.*Normal"):
        trainer.fit(torch.as_tensor(binary_data))


class ValidationRecorder:
    """Records, for each training forward pass of a module, whether Pyro's validation is on."""

    def __init__(self, module):
        self.seen = []
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if module.training and torch.is_grad_enabled():
            self.seen.append(pyro.infer.util.is_validation_enabled())


def test_pyro_validation_checks_each_epochs_first_step_and_changes_no_number(binary_data):
    """4 steps per epoch: validated, then 3 without Pyro's checks; 'always' validates all, with the same numbers."""
    fits = {}
    for mode in ("epoch_start", "always"):
        pyro.set_rng_seed(0)  # the same initial networks and noise for both
        model = SDLGM(input_dim=12, **SMALL)
        recorder = ValidationRecorder(model.guide_.encoder)
        history = Trainer(model.model_, model.guide_, TrainConfig(epochs=3, pyro_validation=mode, **QUICK)).fit(
            torch.as_tensor(binary_data))
        fits[mode] = (model, history, recorder.seen)
    assert fits["epoch_start"][2] == [True, False, False, False] * 3
    assert fits["always"][2] == [True] * 12
    assert losses(fits["epoch_start"][1]) == losses(fits["always"][1])
    assert_same_states(fits["epoch_start"][0].model_, fits["always"][0].model_)
    assert_same_states(fits["epoch_start"][0].guide_, fits["always"][0].guide_)
    assert pyro.infer.util.is_validation_enabled()  # restored after training


def test_pyro_validation_is_never_switched_on_by_the_trainer(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    recorder = ValidationRecorder(model.guide_.encoder)
    with pyro.validation_enabled(False):
        Trainer(model.model_, model.guide_, TrainConfig(epochs=1, **QUICK)).fit(torch.as_tensor(binary_data))
    assert recorder.seen == [False] * 4
    # torch's own default alone off (Pyro's on): training leaves it off
    torch_default = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        model = SDLGM(input_dim=12, **SMALL)
        Trainer(model.model_, model.guide_, TrainConfig(epochs=2, **QUICK)).fit(torch.as_tensor(binary_data))
        assert torch.distributions.Distribution._validate_args is False
        assert pyro.infer.util.is_validation_enabled()
    finally:
        torch.distributions.Distribution.set_default_validate_args(torch_default)


def test_invalid_parameters_in_an_unvalidated_step_still_name_the_site(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    calls = []

    def poison(module, inputs, output):  # from the 3rd training call on: step 2, not an epoch's first step
        calls.append(1)
        return output * float("nan") if module.training and len(calls) >= 3 else None

    model.guide_.encoder.value_head.register_forward_hook(poison)
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=1, **QUICK))
    with pytest.warns(UserWarning, match="NaN"), pytest.raises(NumericalError) as raised:
        trainer.fit(torch.as_tensor(binary_data))
    message = str(raised.value)
    assert "non-finite loss nan at epoch 1, step 2" in message
    assert "guide site 'values' has non-finite values" in message


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_skip_batch_skips_the_update_and_counts_it(binary_data, tmp_path, kind):
    model = SDLGM(input_dim=12, **SMALL)
    params = list(model.model_.parameters()) + list(model.guide_.parameters())
    fault = DecoderFault(model.model_.decoder, at=5, kind=kind, persistent=False, params=params)
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=3, nan_policy="skip_batch", **QUICK))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pyro's validation warns about the NaN
        history = trainer.fit(torch.as_tensor(binary_data), run_dir=tmp_path)
    assert [r["skipped_batches"] for r in history] == [0, 1, 0]
    assert [r["skipped_batches"] for r in metrics_lines(tmp_path)] == [0, 1, 0]
    assert all(np.isfinite(r["train_loss"]) for r in history)
    before, after = fault.snapshots  # parameters at the faulty step and at the next one
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # no update in between
    assert all(torch.isfinite(p).all() for p in params)


def test_skip_batch_stops_when_a_whole_epoch_is_skipped(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    with torch.no_grad():
        model.model_.decoder.net[0].weight.fill_(float("nan"))
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=2, nan_policy="skip_batch", **QUICK))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(NumericalError, match=r"all 4 batches of epoch 1 .* skipped.*step 0.*'obs'"):
            trainer.fit(torch.as_tensor(binary_data))


# ----------------------------------------------------------------------------- safe loading


class Payload:
    """Unpickling this object creates ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_malicious_pickles_are_refused_everywhere(binary_data, tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()  # the payload works when unpickled unsafely

    marker = tmp_path / "pwned"
    files = {"torch": tmp_path / "torch.pt", "pickle": tmp_path / "pickle.pt"}
    torch.save({"format": "pyro_sdlgm.SDLGM", "model_state": Payload(marker)}, files["torch"])
    with files["pickle"].open("wb") as handle:
        pickle.dump({"format": "pyro_sdlgm.SDLGM", "model_state": Payload(marker)}, handle)
    for path in files.values():
        with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
            SDLGM.load(path)
        with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
            SDLGMClassifier.load(path)
        run_dir = tmp_path / f"run_{path.stem}"
        (run_dir / "checkpoints").mkdir(parents=True)
        shutil.copy(path, run_dir / "checkpoints" / "epoch_000001.pt")
        with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
            SDLGM(input_dim=12, **SMALL).fit(binary_data, run_dir=run_dir, resume=True, epochs=2, **QUICK)
    assert not marker.exists()


UNSAFE = [
    (r"(?<![\w.])eval\(", "eval()"),
    (r"(?<![\w.])exec\(", "exec()"),
    (r"\bpickle\.loads?\(", "pickle.load()"),
    (r"\bmarshal\.loads?\(", "marshal.load()"),
    (r"\byaml\.(unsafe_)?load\((?![^)]*SafeLoader)", "yaml.load() without SafeLoader"),
    (r"\byaml\.full_load", "yaml.full_load()"),
    (r"\btorch\.load\((?![^)]*weights_only=True)", "torch.load() without weights_only=True"),
    (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
]


def test_no_module_deserializes_unsafely():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    found = []
    for path in sources:
        text = path.read_text()
        for pattern, what in UNSAFE:
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.name}:{line}: {what}")
    assert not found, found


def test_an_option_missing_from_a_checkpoint_is_a_difference():
    """Checkpoints of format version 2 hold every option: one missing on either side is reported."""
    from pyro_sdlgm.inference.run_folder import config_differences

    saved = {"training": {"epochs": 3}, "model": {"latent_dim": 8}}
    assert config_differences(saved, {"training": {"epochs": 3}, "model": {"latent_dim": 8}}) == []
    assert config_differences(saved, {"training": {"epochs": 3}, "model": {"latent_dim": 8, "slot_layout": "per_slot"}}) == [
        "model.slot_layout: None in the checkpoint, 'per_slot' now"]
