"""Command line: ``sdlgm train | evaluate | predict | encode | inspect`` (also ``python -m pyro_sdlgm``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

# Only the standard library at import time: `sdlgm --help` must not wait for torch and Pyro.
from pyro_sdlgm.exceptions import SDLGMError

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)


def _summary_line(metrics: dict) -> str:
    if "p@1" in metrics:  # multi-label
        return (f"P@1 {metrics['p@1']:.3f} | P@3 {metrics['p@3']:.3f} | P@5 {metrics['p@5']:.3f} | "
                f"example-F1 {metrics['example_f1']:.3f} | count accuracy {metrics['count_accuracy']:.3f} "
                f"(MAE {metrics['count_mae']:.2f})")
    return (
        f"ELBO {metrics['elbo']:.2f} | recon (hard) {metrics['recon']:.2f} | "
        f"non-zeros mean {metrics['mean_nnz']:.2f}, max {metrics['max_nnz']} | "
        f"unused dims {100 * metrics['unused_dim_fraction']:.1f}% (non-zero in no hard code)"
    )


def _inspection_text(result: dict) -> str:
    """The short text summary ``sdlgm inspect`` prints."""
    histogram = ", ".join(f"{level}: {count}" for level, count in result["mode_histogram"].items())
    lines = [
        f"posterior over sparsity, {result['data']} ({result['num_examples']} observations, "
        f"{result['num_samples']} draws each, seed {result['seed']})",
        f"modes of q(L|x) (level: observations): {histogram}",
        f"E[L_i]: mean {result['mean_L']:.2f}, sd across observations {result['sd_between']:.2f}; "
        f"non-zeros of drawn codes: mean {result['mean_nnz']:.2f}",
        f"uncertainty: mean entropy {result['mean_entropy']:.2f} nats (uniform: {result['max_entropy']:.2f}), "
        f"mean width of the 90% interval {result['mean_interval_width']:.2f} levels",
        f"dimensions: {result['dead_dims']} of {result['num_dims']} dead (mean inclusion < 0.001), "
        f"{result['always_on_dims']} always on",
    ]
    if "prefix" in result:
        p, e = result["prefix"], result["dimension_effects"]
        lines.append(f"counts the hard reconstructions support (argmin_l R_l + KL of the first l slots): mean "
                     f"{p['mean_best_count']:.2f} against mean {p['mean_l_hat']:.2f} for the count network's mode, "
                     f"which equals it for {100 * p['l_hat_equals_best']:.0f}% of rows (mean |difference| "
                     f"{p['l_hat_abs_error']:.2f}); count_estimate='refined' uses the supported count")
        used = f"{e['median_effect_used']:.3g} used" if e["median_effect_used"] is not None else "no dimension is used"
        unused = (f"{e['median_effect_unused']:.3g} unused" if e["median_effect_unused"] is not None
                  else "no dimension is unused")
        lines.append(f"hard codes use {e['used_dims']} of {e['num_dims']} dimensions; median effect on the output "
                     f"(|E[x | one dimension] - E[x | empty code]|): {used}, {unused}")
    for source, c in result.get("count_self_check", {}).items():
        spearman = "undefined" if c["spearman"] is None or math.isnan(c["spearman"]) else f"{c['spearman']:.3f}"
        where = "the codes of these rows" if source == "codes" else "the prior"
        lines.append(f"counts of the model's own draws from {where} ({c['num_examples']} rows): Spearman of "
                     f"E[L|x] with the known count {spearman}, the mode exact for {100 * c['accuracy']:.0f}% "
                     f"(mean |error| {c['mean_abs_error']:.2f}), ECE {c['ece']:.3f}; mean count "
                     f"{c['mean_count']:.2f} known, {c['mean_expected_count']:.2f} inferred")
    if "calibration" in result:
        c = result["calibration"]
        lines.append(f"count calibration: ECE {c['ece']:.3f}, accuracy {c['accuracy']:.3f}, mean confidence "
                     f"{c['mean_confidence']:.3f}, NLL {c['nll']:.3f} ({c['out_of_range']} rows with a count "
                     f"outside the levels)")
    if result.get("groups") is not None:
        lines.append("per group:")
        lines.append(result["groups"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if "group_difference" in result:
        d = result["group_difference"]
        lines.append(f"groups differ? Kruskal-Wallis on E[L_i]: H = {d['statistic']:.1f}, p = {d['p_value']:.2g}, "
                     f"groups explain {100 * d['eta_squared']:.1f}% of the variance of E[L_i]")
    lines.append("files: " + ", ".join(result["files"]))
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro-sdlgm")
    except PackageNotFoundError:  # run from a source tree that was not installed
        from pyro_sdlgm import __version__

        return __version__


def _common_options(command: str) -> argparse.ArgumentParser:
    """``--threads`` and ``--plugin``, with help that speaks of ``command``."""
    common = argparse.ArgumentParser(add_help=False)
    threads = "; the same as training.num_threads=N, recorded in config.yaml" if command == "train" else ""
    common.add_argument("--threads", type=_positive_int, metavar="N",
                        help=f"CPU threads torch may use while it runs {command} (default: torch's own choice, usually "
                             f"one per core; 1 is often fastest on a busy machine){threads}")
    recorded = (", before the config is read; recorded in config.yaml (with the config's own plugins key)"
                if command == "train" else ", beside those the run's config.yaml names")
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="a module name or .py file that registers your own components, imported "
                             f"first{recorded}; repeat for several")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlgm", description="Sparse deep latent generative model (SDLGM) in Pyro")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", parents=[_common_options("train")], help="train a model and write a run folder")
    train.add_argument("--config", help="TOML or YAML config file (default: built-in defaults)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. training.epochs=5 model.sparsity_prior.name=truncated_poisson")
    train.add_argument("--run-dir", help="output folder (overrides run_dir of the config)")
    train.add_argument("--overwrite", action="store_true", help="replace the files of an existing run folder")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the interrupted run in RUN_DIR from its newest checkpoint, with its own config.yaml")

    evaluate = sub.add_parser("evaluate", parents=[_common_options("evaluate")], help="evaluate a trained run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--data", help="data source (mnist, digits, .npy/.npz, IDX); default: the run's test split")
    evaluate.add_argument("--num-samples", type=int, default=1, help="Monte-Carlo samples of the ELBO")
    evaluate.add_argument("--json", action="store_true", help="print all metrics as JSON")

    predict = sub.add_parser("predict", parents=[_common_options("predict")], help="write a multi-label run's predicted label ids")
    predict.add_argument("run_dir")
    predict.add_argument("--out", required=True, help="output text file: one line of label ids per row")
    predict.add_argument("--data", help="a file in the run's data format; default: the run's test split")

    inspect = sub.add_parser("inspect", parents=[_common_options("inspect")], help="posterior over sparsity: netCDF, summary tables and plots")
    inspect.add_argument("run_dir")
    inspect.add_argument("--data", help="data source (or a file in a multi-label run's format); default: the run's test split")
    inspect.add_argument("--groups", default="auto",
                         help="'auto' (the data's classes; multi-label: true label counts), 'none', or a .npy / "
                              "text file with one group label per observation")
    inspect.add_argument("--num-samples", type=int, default=100, help="posterior draws per observation")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the draws")
    inspect.add_argument("--show", action="store_true", help="also show the plots on screen")

    encode = sub.add_parser("encode", parents=[_common_options("encode")], help="write hard sparse codes as a scipy CSR .npz")
    encode.add_argument("run_dir")
    encode.add_argument("--out", required=True, help="output .npz file")
    encode.add_argument("--data", help="data source; default: the run's test split")

    options = sub.add_parser("options", help="list every option of a section with its type, default and values")
    options.add_argument("section", nargs="?", choices=("model", "classifier", "training"),
                         help="one section (default: all, as docs/options.md)")
    options.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                         help="a module name or .py file that registers your own components, imported first so that "
                              "they are listed; repeat for several")
    return parser


def _train_config(args, runs):
    """The run config of ``sdlgm train``: a config file with overrides, or a run folder's own for ``--resume``."""
    from pathlib import Path

    from pyro_sdlgm.app.files import CONFIG_FILE
    from pyro_sdlgm.app.run_config import load_run_config
    from pyro_sdlgm.exceptions import CheckpointError, ConfigError

    threads = [f"training.num_threads={args.threads}"] if args.threads is not None else []
    if not args.resume:
        overrides = list(args.overrides) + ([f"run_dir={json.dumps(args.run_dir)}"] if args.run_dir else [])
        return load_run_config(args.config, overrides + threads, plugins=args.plugin)
    if args.config or args.overrides or args.run_dir or args.overwrite or args.plugin:
        raise ConfigError("--resume RUN_DIR continues with RUN_DIR/config.yaml (and the plugins it names): it takes "
                          "no --config, --run-dir, --overwrite, --plugin or KEY=VALUE overrides (--threads is allowed)")
    folder = Path(args.resume)
    if not folder.is_dir():
        raise CheckpointError(f"cannot resume {args.resume!r}: no such folder")
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"cannot resume {args.resume!r}: it is not a run folder (no {CONFIG_FILE})")
    return load_run_config(folder / CONFIG_FILE, [f"run_dir={json.dumps(args.resume)}", *threads])


def _is_first_rank() -> bool:
    """True unless this process is a later rank of a ``torchrun`` launch (which sets ``RANK``)."""
    return os.environ.get("RANK", "0") == "0"


def _finished_run(config) -> str | None:
    """For ``--resume``: the line saying that the run in ``config.run_dir`` has finished (its model
    and evaluation written), or None when there is training (or writing its results) left."""
    from pathlib import Path

    from pyro_sdlgm.app.files import EVALUATION_FILE, MODEL_FILE

    folder = Path(config.run_dir)
    if not ((folder / MODEL_FILE).is_file() and (folder / EVALUATION_FILE).is_file()):
        return None
    metrics = json.loads((folder / EVALUATION_FILE).read_text())
    if "epochs_run" not in metrics:
        return None
    how = "stopped early" if metrics.get("early_stopped") else "ran all its epochs"
    return (f"{config.run_dir} has finished: it {how} ({metrics['epochs_run']} of {config.training.epochs} epochs, "
            f"{metrics['train_seconds']:.1f} s){_stopping_note(metrics)}; nothing to resume. Its results are in "
            f"{folder / EVALUATION_FILE}; sdlgm evaluate {config.run_dir} evaluates it again, and a new run takes "
            "sdlgm train --config ... --overwrite")


def _announce_resume(config) -> None:
    from pyro_sdlgm.inference.checkpoint import TRAINING_FORMAT, load_checkpoint
    from pyro_sdlgm.inference.run_folder import latest_checkpoint_epoch

    epoch, path = latest_checkpoint_epoch(config.run_dir)
    if not _is_first_rank():
        return
    if load_checkpoint(path, TRAINING_FORMAT, mmap=True).get("finished"):  # mapped: the trainer reads it next
        print(f"{config.run_dir} finished training after epoch {epoch} (checkpoint {path}); writing the model, "
              "evaluation and plots it lacks")
    else:
        print(f"resuming {config.run_dir} after epoch {epoch} of {config.training.epochs} (checkpoint {path})")


def _interrupted(config) -> int:
    """Ctrl-C during training: one line naming the last checkpoint and how to continue."""
    from pyro_sdlgm.inference.run_folder import latest_checkpoint_epoch

    if not _is_first_rank():
        return INTERRUPTED
    try:
        epoch, path = latest_checkpoint_epoch(config.run_dir)
    except SDLGMError:
        print(f"sdlgm train: interrupted before the first checkpoint of {config.run_dir}; nothing to resume: "
              "run the same command again with --overwrite", file=sys.stderr)
    else:
        print(f"sdlgm train: interrupted; the last checkpoint is {path} (after epoch {epoch}); continue with: "
              f"sdlgm train --resume {config.run_dir}", file=sys.stderr)
    return INTERRUPTED


def _train(args, runs) -> int:
    """``sdlgm train``: one process, or one rank of a data-parallel run started by ``torchrun``."""
    from pyro_sdlgm.inference import distributed

    config = _train_config(args, runs)
    if args.resume:
        finished = _finished_run(config)
        if finished is not None:
            if _is_first_rank():
                print(finished)
            return 0
        _announce_resume(config)
    try:
        with distributed.process_group(config.training.device) as replicas:
            result = runs.train_run(config, overwrite=args.overwrite, resume=bool(args.resume))
    except KeyboardInterrupt:
        return _interrupted(config)
    if not replicas.is_main:
        return 0
    m = result["metrics"]
    print(f"run folder: {result['run_dir']}" + (f" ({replicas.world_size} data-parallel processes)"
                                                  if replicas.distributed else ""))
    print(f"trained {m['epochs_run']} epochs in {m['train_seconds']:.1f} s" + _stopping_note(m))
    print(f"{m['split']} ({m['num_examples']} examples): {_summary_line(m)}")
    print("plots: " + ", ".join(result["plots"]))
    return 0


def _stopping_note(metrics: dict) -> str:
    note = "; stopped early" if metrics.get("early_stopped") else ""
    if metrics.get("restored_epoch") is not None:
        note += f"; the model is the one after epoch {metrics['restored_epoch']} (best validation loss)"
    return note


def _run_command(args, runs) -> None:
    """``sdlgm evaluate | predict | inspect | encode``."""
    if args.command == "evaluate":
        metrics = runs.evaluate_run(args.run_dir, args.data, args.num_samples)
        if args.json:
            print(json.dumps(metrics, indent=2))
        elif "p@1" in metrics:
            print(f"{metrics['data']} ({metrics['num_examples']} examples): {_summary_line(metrics)}")
            print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        else:
            print(f"{metrics['data']} ({metrics['num_examples']} examples): {_summary_line(metrics)}")
            print(f"KL: sparsity {metrics['kl_sparsity']:.3f}, slots {metrics['kl_slots']:.3f}"
                  + (f", values {metrics['kl_values']:.3f}" if "kl_values" in metrics else ""))
            print(f"non-zero histogram (0..L0): {metrics['nnz_histogram']}")
    elif args.command == "predict":
        result = runs.predict_run(args.run_dir, args.out, args.data)
        print(f"wrote {result['out']}: {result['rows']} rows, {result['mean_labels']:.2f} labels per row")
    elif args.command == "inspect":
        from pyro_sdlgm.app.inspect_command import inspect_run

        print(_inspection_text(inspect_run(args.run_dir, args.data, args.groups, num_samples=args.num_samples,
                                           seed=args.seed, show=args.show, progress=True)))
    elif args.command == "encode":
        result = runs.encode_run(args.run_dir, args.out, args.data)
        print(f"wrote {result['out']}: shape {tuple(result['shape'])}, "
              f"non-zeros per row mean {result['mean_nnz']:.2f}, max {result['max_nnz']}")
        print(f"wrote {result['rows_out']}: the row of {result['source']} each code row belongs to")


def _options(args) -> int:
    from pyro_sdlgm.app import option_docs
    from pyro_sdlgm.plugins import load_plugins

    load_plugins(args.plugin)
    print(option_docs.reference() if args.section is None else "\n".join(option_docs.section(args.section)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may also come after --run-dir/--overwrite: argparse leaves those over
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if args.command != "train" or item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pyro_sdlgm.app import runs  # imported late so that `sdlgm --help` stays fast

    try:
        if args.command == "train":  # applies training.num_threads itself, recorded in config.yaml
            return _train(args, runs)
        if args.command == "options":
            return _options(args)
        from pyro_sdlgm.inference.resources import cpu_threads
        from pyro_sdlgm.inference.run_lock import run_folder_lock
        from pyro_sdlgm.plugins import load_plugins

        load_plugins(args.plugin)
        # a shared lock: refused while a training holds the folder, and keeps one from starting
        with cpu_threads(args.threads), run_folder_lock(args.run_dir, exclusive=False, purpose=f"sdlgm {args.command}"):
            _run_command(args, runs)
    except SDLGMError as err:
        print(f"sdlgm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train handles its own (it names the checkpoint to resume from)
        print(f"sdlgm {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
