"""Do the documents still quote what the demo gives? Train the demo afresh and compare.

The README and ``docs/`` quote figures of the default MNIST run (``make demo``, then
``sdlgm inspect``) and of the Yeast run (``experiments/configs/yeast.toml``). This script
trains both (about 2 minutes on 2 cores; or reads run folders you give), reads each quoted
figure out of the documents with the patterns in :data:`FIGURES`, and prints it beside the
fresh value. It exits with status 1 when a figure is off by more than its tolerance or a
pattern no longer matches its document (the text changed: update the pattern with it).

Tolerances allow for another CPU, which rounds differently and trains along another
trajectory (see docs/results.md): 5% for most figures, more for times and p-values.
``--exact`` asks instead for agreement at the quoted precision, which holds on the machine
that made the documents' runs.

    python -m experiments.check_docs                       # fresh runs in a temporary folder
    python -m experiments.check_docs --mnist runs/mnist --yeast runs/yeast --exact
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?[0-9][0-9,]*(?:\.[0-9]+)?(?:e-?[0-9]+)?)"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One quoted figure: the document, a pattern around it (``{n}`` marks the number), where the
    fresh value comes from, and how far the two may differ."""

    doc: str
    pattern: str  # {n}: the figure; {_}: another number, not compared
    value: Callable[[dict], float]
    relative: float = 0.05  # allowed |quoted - fresh| / max(|fresh|, floor)
    floor: float = 1.0  # below this size the tolerance is absolute: relative * floor
    log10: bool = False  # compare orders of magnitude (p-values): within `relative` decades
    section: str | None = None  # search only below this heading, up to the next heading

    def regex(self) -> re.Pattern:
        escaped = re.escape(self.pattern).replace(re.escape("{n}"), NUMBER)
        return re.compile(escaped.replace(re.escape("{_}"), NUMBER.replace("(", "(?:", 1)))

    def text(self) -> str:
        text = (ROOT / self.doc).read_text()
        if self.section is None:
            return text
        body = text.split(f"{self.section}\n", 1)[1] if f"{self.section}\n" in text else ""
        return re.split(r"^#", body, maxsplit=1, flags=re.MULTILINE)[0]


def _e(run: str, key: str):
    return lambda r: r[run]["evaluation"][key]


def _i(run: str, *keys: str):
    def value(r):
        node = r[run]["inspection"]
        for key in keys:
            node = node[key]
        return node
    return value


PCT = 100.0


def _results(pattern: str, value, **tolerance) -> Figure:
    """A figure of docs/results.md's table of the current defaults (not of the earlier defaults' table)."""
    return Figure("docs/results.md", pattern, value, section="## Measured on MNIST-5k (default config)", **tolerance)

FIGURES = [
    # README: the demo's printed summary and its reading
    Figure("README.md", "ELBO {n} | recon (hard)", _e("mnist", "elbo")),
    Figure("README.md", "recon (hard) {n} | non-zeros", _e("mnist", "recon")),
    Figure("README.md", "non-zeros mean {n}, max", _e("mnist", "mean_nnz")),
    Figure("README.md", "unused dims {n}% (non-zero", lambda r: PCT * r["mnist"]["evaluation"]["unused_dim_fraction"],
           relative=1.0, floor=2.0),
    Figure("README.md", "trained {n} epochs in", _e("mnist", "epochs_run"), relative=0.3),
    Figure("README.md", "epochs in {n} s; stopped", _e("mnist", "train_seconds"), relative=0.5),
    Figure("README.md", "reconstruct a test digit in {n} nats", _e("mnist", "recon")),
    # docs/inspection.md: the MNIST inspect output and its reading, then Yeast
    Figure("docs/inspection.md", "E[L_i]: mean {n}, sd across", _i("mnist", "mean_L")),
    Figure("docs/inspection.md", "sd across observations {n}; non-zeros", _i("mnist", "sd_between"), relative=0.15),
    Figure("docs/inspection.md", "uncertainty: mean entropy {n} nats", _i("mnist", "mean_entropy"), relative=0.1,
           floor=1.0),
    Figure("docs/inspection.md", "the 90% interval {n} levels", _i("mnist", "mean_interval_width"), relative=0.2),
    Figure("docs/inspection.md", "dimensions: {n} of 200 dead", _i("mnist", "dead_dims"), relative=2.0),
    Figure("docs/inspection.md", "which equals it for {n}% of rows",
           lambda r: PCT * r["mnist"]["inspection"]["prefix"]["l_hat_equals_best"], relative=0.1, floor=100.0),
    Figure("docs/inspection.md", "hard codes use {n} of 200 dimensions", _i("mnist", "dimension_effects", "used_dims")),
    Figure("docs/inspection.md", "Kruskal-Wallis on E[L_i]: H = {n}, p = {_}",
           _i("mnist", "group_difference", "statistic"), relative=1.0),
    Figure("docs/inspection.md", "H = {_}, p = {n}, groups explain",
           _i("mnist", "group_difference", "p_value"), relative=2.0, log10=True),
    Figure("docs/inspection.md", "groups explain {n}% of the variance of E[L_i]\n```",
           lambda r: PCT * r["mnist"]["inspection"]["group_difference"]["eta_squared"], relative=1.0, floor=10.0),
    Figure("docs/inspection.md", "mean entropy {_} nats against {n} for a", _i("mnist", "max_entropy"), relative=0.01),
    Figure("docs/inspection.md", "the count network is **calibrated**: ECE\n{n}",
           lambda r: r["yeast"]["inspection"]["calibration"]["ece"], relative=0.03, floor=1.0),
    Figure("docs/inspection.md", "mean confidence {n} against accuracy",
           lambda r: r["yeast"]["inspection"]["calibration"]["mean_confidence"]),
    Figure("docs/inspection.md", "against accuracy {n}, and NLL",
           lambda r: r["yeast"]["inspection"]["calibration"]["accuracy"]),
    Figure("docs/inspection.md", "NLL of the true count {n} (one gene",
           lambda r: r["yeast"]["inspection"]["calibration"]["nll"]),
    Figure("docs/inspection.md", "917 test genes; P@1 {n}, count", _e("yeast", "p@1")),
    Figure("docs/inspection.md", "{n} of the 917 genes get the mode 4",
           lambda r: r["yeast"]["inspection"]["mode_histogram"]["4"], relative=0.1, floor=917.0),
    # docs/results.md: the table of the current defaults (not the earlier defaults' below it)
    _results("| ELBO (discrete-KL objective, final temperatures) | {n} |", _e("mnist", "elbo")),
    _results("z_hard))` | {n} nats |", _e("mnist", "recon")),
    _results("summed over 784 pixels) | {n} |", _e("mnist", "mse"), relative=0.1),
    _results("mean (sd), min, max | {n} (", _e("mnist", "mean_nnz")),
    _results("| unused dimensions (non-zero in no hard test code) | {n}% of 200 |",
           lambda r: PCT * r["mnist"]["evaluation"]["unused_dim_fraction"], relative=1.0, floor=2.0),
    _results("dead dimensions | {n} nats", _i("mnist", "mean_entropy"), relative=0.1, floor=1.0),
    _results("time of the epochs | {n} of 100", _e("mnist", "epochs_run"), relative=0.3),
    _results("each training checkpoint (3 kept) | {n} MB;", lambda r: r["mnist"]["model_mb"]),
    _results("MB; {n} MB |", lambda r: r["mnist"]["checkpoint_mb"]),
    Figure("docs/cli.md", "{_} MB each against\n{n} MB for `model.pt`", lambda r: r["mnist"]["model_mb"]),
    Figure("docs/cli.md", "several times the model's size: {n} MB each", lambda r: r["mnist"]["checkpoint_mb"]),
]


def _sdlgm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pyro_sdlgm", *args], check=True, cwd=ROOT)


def train_run(name: str, folder: Path) -> Path:
    """Train the run of ``experiments/configs/NAME.toml`` into ``folder/NAME`` and inspect it."""
    run_dir = folder / name
    _sdlgm("train", "--config", f"experiments/configs/{name}.toml", f"run_dir={json.dumps(str(run_dir))}",
           "training.progress=false")
    _sdlgm("inspect", str(run_dir))
    return run_dir


def read_run(run_dir: Path) -> dict:
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.pt"))
    return {"evaluation": json.loads((run_dir / "evaluation.json").read_text()),
            "inspection": json.loads((run_dir / "inspection.json").read_text()),
            "model_mb": (run_dir / "model.pt").stat().st_size / 1e6,
            "checkpoint_mb": checkpoints[-1].stat().st_size / 1e6 if checkpoints else math.nan}


def compare(figure: Figure, quoted_text: str, fresh: float, exact: bool) -> bool:
    """Whether ``quoted_text`` (as the document prints it) still describes ``fresh``."""
    quoted = float(quoted_text.replace(",", ""))
    if exact:  # the fresh value rounded as the document rounds it
        decimals = len(quoted_text.split(".")[1].split("e")[0]) if "." in quoted_text else 0
        if "e" in quoted_text:
            return float(f"{fresh:.{decimals}e}") == quoted
        return math.isclose(round(fresh, decimals), quoted, abs_tol=10 ** -(decimals + 3))
    if figure.log10:
        return abs(math.log10(quoted) - math.log10(max(fresh, 1e-300))) <= figure.relative
    return abs(quoted - fresh) <= figure.relative * max(abs(fresh), figure.floor)


def check(results: dict, exact: bool, figures: list[Figure] = FIGURES) -> list[str]:
    """One line per figure; the lines of stale figures and unmatched patterns start with 'STALE'."""
    lines = []
    for figure in figures:
        found = figure.regex().findall(figure.text())
        fresh = float(figure.value(results))
        if len(found) != 1:
            lines.append(f"STALE {figure.doc}: pattern {figure.pattern!r} matches {len(found)} places, not one")
            continue
        ok = compare(figure, found[0], fresh, exact)
        lines.append(f"{'ok   ' if ok else 'STALE'} {figure.doc}: {figure.pattern!r} quotes {found[0]}, "
                     f"the fresh run gives {fresh:.6g}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, help="a finished and inspected demo run folder (default: train one)")
    parser.add_argument("--yeast", type=Path, help="a finished and inspected Yeast run folder (default: train one)")
    parser.add_argument("--exact", action="store_true", help="agreement at the quoted precision (same machine)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdlgm_docs_") as scratch:
        runs = {"mnist": args.mnist, "yeast": args.yeast}
        results = {name: read_run(folder or train_run(name, Path(scratch))) for name, folder in runs.items()}
    lines = check(results, args.exact)
    print("\n".join(lines))
    stale = sum(line.startswith("STALE") for line in lines)
    print(f"{len(lines) - stale} of {len(lines)} quoted figures agree with the run" + ("" if not stale else
          f"; {stale} stale"))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
