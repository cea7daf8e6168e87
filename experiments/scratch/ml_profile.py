"""Profile one epoch of SDLGMClassifier on Bibtex (scratch)."""
import cProfile, pstats, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from experiments.multilabel_suite import load_dataset, settings_for, DEFAULT_BIBTEX
from pyro_sdlgm import SDLGMClassifier
import tomllib
cfg = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("multilabel_suite.toml").read_text())
train, test = load_dataset({"kind": "bibtex", "path": DEFAULT_BIBTEX, "settings": settings_for(cfg, "bibtex", False)})
opts = eval(sys.argv[1]) if len(sys.argv) > 1 else {}
fit = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
clf = SDLGMClassifier(159, **dict(dict(max_labels=10, on_overflow="truncate"), **opts))
t = time.time()
pr = cProfile.Profile(); pr.enable()
clf.fit(train.X, train.Y, **dict(dict(epochs=2, progress=False, device="cpu", patience=None), **fit))
pr.disable()
print("fit s", time.time() - t)
pstats.Stats(pr).sort_stats("tottime").print_stats(25)
