"""Probe: how much of the hard-code error on lg_k40 is the guide's values, given its support?

Trains sdlgm_lin (library defaults + linear decoder) on lg_k40 for one seed, then compares the
explained variance of the test rows' hard codes with (a) the guide's mean values and (b) the
least-squares values on the same support under the learned linear decoder (weighted by the
Normal likelihood's per-feature precision).
"""
import sys, time
import numpy as np, torch
torch.set_num_threads(1)
from experiments import recovery
from experiments import recovery_data as rd
from pyro_sdlgm import SDLGM

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
revive = int(sys.argv[2]) if len(sys.argv) > 2 else 0  # training.revive_every
cfg = {**recovery.SPLIT_SIZES, **recovery.SETTINGS["lg_k40"]}
splits = rd.make_splits(cfg, 0)
(xtr, *_), (xva, *_), (xte, *_) = splits["train"], splits["val"], splits["test"]
m = SDLGM(input_dim=100, latent_dim=40, max_sparsity=8, likelihood="normal", decoder_hidden=[])
t = time.time()
history = m.fit(xtr, validation_data=xva, epochs=200, batch_size=128, learning_rate=1e-3, seed=seed, patience=10,
                progress=False, revive_every=revive).history_
print("fit", time.time() - t, "epochs", len(history), "revived", [r.get("revived_dims") for r in history if "revived_dims" in r])
mean = xtr.mean(0)
codes = m.encode(xte)
xhat = m.reconstruct(xte)
print("EV guide values", rd.explained_variance(xte, xhat, mean), "nnz", (codes != 0).sum(1).mean())
lin = m.model_.decoder.net[0]
W = lin.weight.detach().numpy().T  # (K, D)
b = lin.bias.detach().numpy()
scale = m.model_.likelihood.dist(torch.zeros(1, 100)).base_dist.scale.detach().numpy().ravel() if hasattr(m.model_.likelihood.dist(torch.zeros(1, 100)), "base_dist") else np.ones(100)
w = 1 / scale**2
refit = np.zeros_like(codes)
for i in range(len(xte)):
    S = np.flatnonzero(codes[i])
    if len(S) == 0:
        continue
    A = W[S] * np.sqrt(w)
    y = (xte[i] - b) * np.sqrt(w)
    refit[i, S] = np.linalg.lstsq(A.T, y, rcond=None)[0]
xhat2 = refit @ W + b
print("EV LS values on the same support", rd.explained_variance(xte, xhat2, mean))
usage = (m.encode(xtr) != 0).mean(0)
print("usage sorted", np.round(np.sort(usage), 3))
Wtrue = splits["train"][3]["W"]  # (K, D)
def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-9)
C = np.abs(unit(Wtrue) @ unit(W).T)  # (true K, learned K)
print("best |cos| per true atom", np.round(np.sort(C.max(1)), 3))
print("learned atoms claimed by the same true atom:", np.bincount(C.argmax(0), minlength=40).max())
