"""What a run folder tells a user: resume of a finished run, the training time, epoch numbers,
file modes, what a finished run keeps, one process at a time, plugins from the command line."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY
from pyro_sdlgm.app.cli import _inspection_text, main
from pyro_sdlgm.exceptions import RunFolderBusyError
from pyro_sdlgm.inference.checkpoint import TRAINING_FORMAT, atomic_save, list_checkpoints, load_checkpoint
from pyro_sdlgm.inference.run_lock import LOCK_FILE, run_folder_lock


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "training.epochs=3", "--run-dir", str(run_dir)]) == 0
    return run_dir


def metrics_records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resuming_a_finished_run_says_so_and_changes_no_file(finished_run, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "has finished" in out and "3 of 3 epochs" in out and "nothing to resume" in out
    assert "resuming" not in out and "trained" not in out
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before


def test_train_seconds_is_the_time_of_the_epochs_and_evaluate_keeps_it(finished_run, capsys):
    path = finished_run / "evaluation.json"
    recorded = json.loads(path.read_text())
    assert recorded["train_seconds"] == pytest.approx(sum(r["seconds"] for r in metrics_records(finished_run)))
    assert main(["evaluate", str(finished_run)]) == 0
    refreshed = json.loads(path.read_text())
    for key in ("train_seconds", "epochs_run", "early_stopped", "restored_epoch", "split"):
        assert refreshed[key] == recorded[key], key


def test_a_run_whose_results_were_not_written_is_completed_by_resume(finished_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "evaluation.json").unlink()  # as if killed after training, before the evaluation
    assert main(["train", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "finished training after epoch 3" in out and "writing the model, evaluation and plots" in out
    recorded = json.loads((run_dir / "evaluation.json").read_text())
    assert recorded["epochs_run"] == 3
    assert recorded["train_seconds"] == pytest.approx(sum(r["seconds"] for r in metrics_records(run_dir)))


def test_epochs_count_from_one_everywhere(finished_run):
    records = metrics_records(finished_run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    newest = list_checkpoints(finished_run / "checkpoints")[-1]
    assert newest[0] == 3 and load_checkpoint(newest[1], TRAINING_FORMAT)["history"] == records


def test_a_checkpoint_counting_epochs_from_zero_resumes_counted_from_one(tmp_path):
    """Training checkpoints of pyro_sdlgm 0.2.0 numbered their history from 0."""
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "training.epochs=3", "training.checkpoint_every=1", "--run-dir", str(run_dir)]) == 0
    expected = metrics_records(run_dir)
    for epoch, path in list_checkpoints(run_dir / "checkpoints"):
        if epoch == 3:
            path.unlink()
            continue
        state = load_checkpoint(path, TRAINING_FORMAT)
        del state["history_epochs_from"]
        state["history"] = [{**r, "epoch": r["epoch"] - 1} for r in state["history"]]
        atomic_save(state, path)
    (run_dir / "evaluation.json").unlink()
    assert main(["train", "--resume", str(run_dir)]) == 0
    resumed = metrics_records(run_dir)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in expected]


def test_version_flag(capsys):
    from pyro_sdlgm import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"sdlgm {__version__}"


def test_every_file_of_a_run_gets_the_mode_the_umask_gives(finished_run):
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    modes = {str(p.relative_to(finished_run)): p.stat().st_mode & 0o777 for p in finished_run.rglob("*") if p.is_file()}
    assert {"model.pt", "metrics.jsonl", "config.yaml", "evaluation.json"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != expected} == {}


def test_keep_model_deletes_the_training_checkpoints_after_training(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "keep=model", "--run-dir", str(run_dir)]) == 0
    assert list_checkpoints(run_dir / "checkpoints") == [] and (run_dir / "model.pt").is_file()
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "has finished" in capsys.readouterr().out
    assert main(["train", *TINY, "keep=everything", "--run-dir", str(tmp_path / "bad")]) == 2
    assert "keep in the command-line overrides must be one of ('all', 'model')" in capsys.readouterr().err


def test_inspect_text_says_when_no_dimension_is_unused():
    result = {"data": "d", "num_examples": 2, "num_samples": 3, "seed": 0, "mode_histogram": {1: 2}, "mean_L": 1.0,
              "sd_between": 0.0, "mean_nnz": 1.0, "mean_entropy": 0.1, "max_entropy": 0.7,
              "mean_interval_width": 0.0, "dead_dims": 0, "num_dims": 4, "always_on_dims": 0, "files": [],
              "prefix": {"mean_best_count": 1.0, "mean_l_hat": 1.0, "l_hat_equals_best": 1.0, "l_hat_abs_error": 0.0},
              "dimension_effects": {"used_dims": 4, "num_dims": 4, "median_effect_used": 0.5,
                                    "median_effect_unused": None}}
    text = _inspection_text(result)
    assert "no dimension is unused" in text and "nan" not in text


# ----------------------------------------------------------------------------- one process per run folder

HOLDER = textwrap.dedent("""
    import sys, time
    from pyro_sdlgm.inference.run_lock import run_folder_lock
    with run_folder_lock(sys.argv[1], exclusive=sys.argv[2] == "exclusive"):
        print("locked", flush=True)
        time.sleep(120)
""")


def hold(folder, mode="exclusive"):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def kill(holder):
    """SIGKILL: the process gets no chance to release its lock itself."""
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()


def test_a_run_folder_in_use_is_refused_naming_the_process_and_freed_when_it_is_killed(finished_run, tmp_path,
                                                                                        capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    holder = hold(run_dir)
    try:
        for argv in (["train", *TINY, "--run-dir", str(run_dir), "--overwrite"], ["train", "--resume", str(run_dir)],
                     ["evaluate", str(run_dir)]):
            if argv[1] == "--resume":
                (run_dir / "evaluation.json").rename(run_dir / "evaluation.json.away")  # a run left to resume
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "is in use by" in err and f"pid {holder.pid} " in err, err
            if argv[1] == "--resume":
                (run_dir / "evaluation.json.away").rename(run_dir / "evaluation.json")
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_FILE} == before
    finally:
        kill(holder)
    # the system released the killed process's lock: the folder is free again
    assert main(["train", *TINY, "--run-dir", str(run_dir), "--overwrite"]) == 0
    assert len(metrics_records(run_dir)) == 2


def test_readers_share_a_run_folder_and_keep_training_out(finished_run, capsys):
    reader = hold(finished_run, "shared")
    try:
        assert main(["evaluate", str(finished_run)]) == 0  # two readers at once
        with pytest.raises(RunFolderBusyError, match="reading it"):
            with run_folder_lock(finished_run):
                pass
    finally:
        kill(reader)
    with run_folder_lock(finished_run), run_folder_lock(finished_run):  # re-entrant in one process
        pass


def test_fit_from_python_holds_the_run_folder(binary_data, tmp_path):
    from pyro_sdlgm import SDLGM

    holder = hold(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid} "):
            SDLGM(input_dim=12, latent_dim=6, max_sparsity=2).fit(binary_data, epochs=1, run_dir=tmp_path / "run",
                                                                  progress=False)
    finally:
        kill(holder)


# ----------------------------------------------------------------------------- plugins

PLUGIN = textwrap.dedent("""
    import torch
    from pyro_sdlgm import SparsityPrior, register_sparsity_prior

    @register_sparsity_prior("two_point_plugin")
    class TwoPoint(SparsityPrior):
        def __init__(self, spec, mass_on_one: float = 0.5):
            super().__init__(spec)
            self.mass_on_one = mass_on_one

        def logits(self):
            logits = torch.full_like(self.levels, -30.0)
            logits[0] = torch.tensor(self.mass_on_one).log()
            logits[-1] = torch.tensor(1 - self.mass_on_one).log()
            return logits
""")


@pytest.fixture
def plugin_registry(monkeypatch):
    """The sparsity-prior registry and sys.modules as they were: a plugin's registration ends with the test."""
    from pyro_sdlgm.model.priors import SPARSITY_PRIORS

    monkeypatch.setattr(SPARSITY_PRIORS, "_factories", dict(SPARSITY_PRIORS._factories))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("pyro_sdlgm_plugin_") or name in ("my_priors", "broken"):
            del sys.modules[name]


def test_a_prior_registered_in_a_plugin_is_used_from_the_command_line(tmp_path, capsys, monkeypatch,
                                                                       plugin_registry):
    (tmp_path / "plugins").mkdir()
    plugin = tmp_path / "plugins" / "my_priors.py"
    plugin.write_text(PLUGIN)
    prior = "model.sparsity_prior.name=two_point_plugin"
    assert main(["train", *TINY, prior, "--run-dir", str(tmp_path / "none")]) == 2
    assert "two_point_plugin" in capsys.readouterr().err  # not registered without the plugin
    # a config file names the plugin relative to itself
    config = tmp_path / "run.toml"
    config.write_text('plugins = ["plugins/my_priors.py"]\n')
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "plugins")
    assert main(["train", "--config", str(config), *TINY, prior, "--run-dir", str(run_dir)]) == 0
    recorded = (run_dir / "config.yaml").read_text()
    assert str(plugin.resolve()) in recorded and "two_point_plugin" in recorded
    # a fresh interpreter reads the run back: config.yaml imports the plugin again
    monkeypatch.chdir(tmp_path)
    for command in (["evaluate", str(run_dir)], ["train", "--resume", str(run_dir)]):
        done = subprocess.run([sys.executable, "-m", "pyro_sdlgm", *command], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    # a module name, from the current folder, with --plugin
    monkeypatch.chdir(tmp_path / "plugins")
    done = subprocess.run([sys.executable, "-m", "pyro_sdlgm", "train", *TINY, prior, "--plugin", "my_priors",
                           "--run-dir", str(tmp_path / "by_name")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "plugins:\n- my_priors" in (tmp_path / "by_name" / "config.yaml").read_text()


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path, capsys, plugin_registry):
    assert main(["train", *TINY, "--plugin", "no_such_plugin_module", "--run-dir", str(tmp_path / "r")]) == 2
    assert "plugin module 'no_such_plugin_module' not found" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('my plugin is broken')\n")
    assert main(["train", *TINY, "--plugin", str(broken), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "my plugin is broken" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["evaluate", "encode", "inspect", "predict"])
def test_threads_help_speaks_of_its_own_command(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"while it runs {command}" in text and "training.num_threads" not in text
