"""The files of a run folder (see :mod:`pyro_sdlgm.app.runs`)."""

from pyro_sdlgm.inference.checkpoint import CHECKPOINT_DIR
from pyro_sdlgm.inference.run_folder import METRICS_FILE

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"
POSTERIOR_FILE = "posterior.nc"
SUMMARY_FILE = "sparsity_summary.csv"
GROUPS_FILE = "sparsity_groups.csv"
CALIBRATION_FILE = "count_calibration.csv"
INSPECTION_FILE = "inspection.json"
PREFIX_FILE = "prefix_counts.csv"
EFFECTS_FILE = "dimension_effects.csv"
SELF_CHECK_FILE = "count_self_check.csv"
PLOTS_DIR = "plots"
_OUTPUTS = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, EVALUATION_FILE, POSTERIOR_FILE, SUMMARY_FILE, GROUPS_FILE,
            CALIBRATION_FILE, INSPECTION_FILE, PREFIX_FILE, EFFECTS_FILE, SELF_CHECK_FILE)
#: the files a run (train, then inspect) writes: name patterns at the top, and in each folder; an
#: interrupted atomic write leaves ``.NAME.*.tmp`` (see checkpoint.atomic_write)
RUN_FILES = _OUTPUTS + tuple(f".{name}.*.tmp" for name in _OUTPUTS)
RUN_FOLDERS = {PLOTS_DIR: ("*.png",), CHECKPOINT_DIR: ("epoch_*.pt", ".epoch_*.pt.*.tmp")}
