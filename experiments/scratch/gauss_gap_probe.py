"""Probe: on values near zero (lg_k40_gauss), is SDLGM's count gap the learned dictionary or the inference?

Trains SDLGM with a linear decoder (library defaults otherwise) for one seed, then scores on the
test rows (Spearman of the count with L, explained variance, mean non-zeros):
  (a) the model itself (refined count, guide values);
  (b) OMP with the learned dictionary (decoder weight, bias removed), tolerance factor * D sigma^2
      with sigma the learned per-feature scale (mean) and the factor chosen on validation counts;
  (c) the same OMP with the true dictionary (the ceiling);
and reports the learned noise scale and the dictionary recovery (mean |cos| after matching).
    python -m experiments.scratch.gauss_gap_probe SEED EPOCHS [setting] [hidden...]
"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from scipy.optimize import linear_sum_assignment
from experiments import recovery
from experiments import recovery_data as rd
from pyro_sdlgm import SDLGM

seed, epochs = int(sys.argv[1]), int(sys.argv[2])
setting = sys.argv[3] if len(sys.argv) > 3 else "lg_k40_gauss"
cfg = recovery.setting_config(setting)
splits = rd.make_splits(cfg, 0)
(xtr, Str, Ltr, _), (xva, _, Lva, _), (xte, Ste, Lte, pte) = splits["train"], splits["val"], splits["test"]
m = SDLGM(input_dim=cfg["D"], latent_dim=cfg["K"], max_sparsity=cfg["L0"], likelihood="normal", decoder_hidden=[])
t = time.time()
m.fit(xtr, validation_data=xva, epochs=epochs, seed=seed, progress=False)
out = {"seed": seed, "epochs": epochs, "fit_s": time.time() - t, "epochs_run": len(m.history_)}
mean = xtr.mean(0)
codes = m.encode(xte)
out["a_spearman"] = rd.spearman(m.sparsity_posterior(xte) @ m.sparsity_levels, Lte)
out["a_ev"] = rd.explained_variance(xte, m.reconstruct(xte), mean)
out["a_nnz"] = float((codes != 0).sum(1).mean())
lin = m.model_.decoder.net[0]
W_hat, b_hat = lin.weight.detach().numpy().T.astype(np.float64), lin.bias.detach().numpy().astype(np.float64)
sigma = m.model_.likelihood.scale().detach().numpy()
out["sigma_mean"], out["sigma_true"] = float(sigma.mean()), cfg["noise"]
W = pte["W"]
cos = np.abs((W_hat / np.linalg.norm(W_hat, axis=1, keepdims=True)) @ (W / np.linalg.norm(W, axis=1, keepdims=True)).T)
r, c = linear_sum_assignment(cos, maximize=True)
out["atom_cosine"] = float(cos[r, c].mean())
out["atoms_above_0.99"] = int((cos[r, c] >= 0.99).sum())
for tag, dictionary, bias, noise in (("b", W_hat, b_hat, float(np.sqrt((sigma ** 2).mean()))), ("b_truenoise", W_hat, b_hat, cfg["noise"]),
                                     ("c", W, 0.0, cfg["noise"])):
    base = cfg["D"] * noise ** 2
    factors = (0.5, 0.7, 1.0, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0)
    f = max(factors, key=lambda f: rd.spearman((recovery.omp_codes(xva - bias, dictionary, f * base, cfg["L0"]) != 0).sum(1), Lva))
    Z = recovery.omp_codes(xte - bias, dictionary, f * base, cfg["L0"])
    out[f"{tag}_factor"] = f
    out[f"{tag}_spearman"] = rd.spearman((Z != 0).sum(1), Lte)
    out[f"{tag}_ev"] = rd.explained_variance(xte, Z @ dictionary + bias, mean)
    out[f"{tag}_nnz"] = float((Z != 0).sum(1).mean())
print(json.dumps(out))
