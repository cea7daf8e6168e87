"""Probe: does a better starting dictionary give a better count on values near zero (lg_k40_gauss)?

Hypothesis (from the refit and dictionary probes): the count is limited by the learned dictionary
(mean matched |cos| 0.87-0.93), not by the noise scale. Refutation: starting the decoder's linear
part at a classical dictionary (scikit-learn's MiniBatchDictionaryLearning, alpha 3, 20 passes,
atoms scaled so that their OMP codes have unit RMS) leaves the atom cosine or Spearman unchanged.

    python -m experiments.scratch.dictionary_init_probe SEED VARIANT   # VARIANT: lin | skip
"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from sklearn.decomposition import MiniBatchDictionaryLearning
from experiments import recovery
from experiments import recovery_data as rd
from pyro_sdlgm import SDLGM
from pyro_sdlgm.model import networks

seed, variant = int(sys.argv[1]), sys.argv[2]
cfg = recovery.setting_config("lg_k40_gauss")
splits = rd.make_splits(cfg, 0)
(xtr, *_), (xva, *_), (xte, _, Lte, pte) = splits["train"], splits["val"], splits["test"]
t = time.time()
center = xtr.mean(0).astype(np.float64)
learner = MiniBatchDictionaryLearning(n_components=40, alpha=3.0, batch_size=128, max_iter=20, tol=0.0,
                                      max_no_improvement=None, random_state=seed).fit(xtr - center)
atoms = learner.components_  # (K, D), unit norm
codes = recovery.omp_codes(xtr - center, atoms, 1.3 * 100 * 0.1 ** 2, 8)
rms = np.sqrt((codes[codes != 0] ** 2).mean())
init = torch.as_tensor(atoms.T * rms, dtype=torch.float32)  # (D, K): codes of unit RMS
dict_seconds = time.time() - t

original = networks.Decoder.__init__


def init_decoder(self, *args, **kwargs):
    original(self, *args, **kwargs)
    layer = self.skip if self.skip is not None else self.net[0]
    with torch.no_grad():
        layer.weight.copy_(init)


networks.Decoder.__init__ = init_decoder
options = {"decoder_hidden": []} if variant == "lin" else {"decoder_skip": True}
m = SDLGM(input_dim=100, latent_dim=40, max_sparsity=8, likelihood="normal", **options)
m.fit(xtr, validation_data=xva, epochs=100, seed=seed, progress=False)
out = {"seed": seed, "variant": variant, "dict_seconds": round(dict_seconds, 1), "epochs_run": len(m.history_),
       "init_atom_cosine": rd.atom_cosine(atoms, pte["W"]),
       "atom_cosine": rd.atom_cosine(recovery.decoder_atoms(m), pte["W"]),
       "ev": rd.explained_variance(xte, m.reconstruct(xte), xtr.mean(0)),
       "spearman": rd.spearman(m.sparsity_posterior(xte) @ m.sparsity_levels, Lte),
       "nnz": float((m.encode(xte) != 0).sum(1).mean()), "true_nnz": float(Lte.mean()),
       "sigma": float(m.model_.likelihood.scale().detach().mean())}
print(json.dumps(out))
