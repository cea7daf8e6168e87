"""Probe: what is wrong with the learned dictionary on values near zero (lg_k40_gauss)?

Trains SDLGM (library defaults, the given model options) for one seed and prints, for the
decoder's atoms (decoder(e_k) - decoder(0)): per true atom the |cos| of its best learned atom,
per learned atom its usage in the training rows' hard codes and its best |cos| with any other
learned atom (duplicates), and the true atoms no learned atom matches at |cos| >= 0.95.

    python -m experiments.scratch.dictionary_probe SEED [OPTIONS_JSON] [EPOCHS]
"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from experiments import recovery
from experiments import recovery_data as rd
from pyro_sdlgm import SDLGM

seed = int(sys.argv[1])
options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"decoder_hidden": []}
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 100
cfg = recovery.setting_config("lg_k40_gauss")
splits = rd.make_splits(cfg, 0)
(xtr, Str, *_), (xva, *_) = splits["train"], splits["val"]
W = splits["train"][3]["W"]
m = SDLGM(input_dim=100, latent_dim=40, max_sparsity=8, likelihood="normal", **options)
m.fit(xtr, validation_data=xva, epochs=epochs, seed=seed, progress=False)
A = recovery.decoder_atoms(m)
unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
cos_true = np.abs(unit(A) @ unit(W).T)  # (learned, true)
cos_self = np.abs(unit(A) @ unit(A).T)
np.fill_diagonal(cos_self, 0)
usage = (m.encode(xtr) != 0).mean(0)
best_true = cos_true.max(0)
out = {"seed": seed, "options": options, "atom_cosine": rd.atom_cosine(A, W),
       "true_atoms_unmatched_0.95": int((best_true < 0.95).sum()),
       "true_best_cos_sorted": np.round(np.sort(best_true), 3).tolist()[:12],
       "learned_duplicates_0.9": int((cos_self.max(1) > 0.9).sum()),
       "learned_max_self_cos_sorted": np.round(np.sort(cos_self.max(1))[::-1], 3).tolist()[:12],
       "usage_sorted": np.round(np.sort(usage), 3).tolist(),
       "true_usage": float(Str.mean()),
       # learned atoms that are mixtures: best cos with a true atom below 0.9
       "learned_mixtures_0.9": int((cos_true.max(1) < 0.9).sum())}
print(json.dumps(out))
