"""Probe: the default MLP decoder against a linear one and an MLP with an explicit linear part.

    python -m experiments.scratch.decoder_probe SEED EPOCHS VARIANT [SETTING] [LIKELIHOOD]

VARIANT: ``mlp`` (the default decoder), ``lin`` (``decoder_hidden=()``), ``skip`` (the default
MLP plus a linear map of the code, ``x = A z + MLP(z)``), ``skip0`` (the same with the MLP's
last layer initialized at zero, so training starts from a linear decoder). Prints one JSON line:
train and test explained variance of the hard codes, Spearman(E[L|x], L), mean non-zeros, the
learned noise scale (normal likelihood) and the epochs run.
"""
import json, sys, time
import numpy as np, torch
from torch import nn
torch.set_num_threads(1)
from experiments import recovery
from experiments import recovery_data as rd
from pyro_sdlgm import SDLGM
from pyro_sdlgm.model import networks

seed, epochs, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
setting = sys.argv[4] if len(sys.argv) > 4 else "lg_k40_gauss"

if variant in ("skip", "skip0"):
    original_init = networks.Decoder.__init__

    def init(self, latent_dim, output_dim, hidden=(256, 512), activation="relu"):
        original_init(self, latent_dim, output_dim, hidden, activation)
        self.skip = nn.Linear(latent_dim, output_dim, bias=False)
        if variant == "skip0":
            nn.init.zeros_(self.net[-1].weight)

    def forward(self, z):
        dense = z if isinstance(z, torch.Tensor) else torch.zeros(*z.index.shape[:-1], self.skip.in_features).scatter(-1, z.index, z.value)
        return self.net(dense) + self.skip(dense)

    networks.Decoder.__init__, networks.Decoder.forward = init, forward

cfg = recovery.setting_config(setting)
likelihood = recovery.LIKELIHOODS[cfg["kind"]]
splits = rd.make_splits(cfg, 0)
(xtr, *_), (xva, *_), (xte, _, Lte, _) = splits["train"], splits["val"], splits["test"]
options = {"decoder_hidden": []} if variant == "lin" else {}
m = SDLGM(input_dim=cfg["D"], latent_dim=cfg["K"], max_sparsity=cfg["L0"], likelihood=likelihood, **options)
t = time.time()
m.fit(xtr, validation_data=xva, epochs=epochs, seed=seed, progress=False)
out = {"setting": setting, "variant": variant, "seed": seed, "epochs": epochs, "fit_s": round(time.time() - t, 1),
       "epochs_run": len(m.history_)}
mean = xtr.mean(0)
for name, x in (("train", xtr), ("test", xte)):
    out[f"ev_{name}"] = rd.explained_variance(x, m.reconstruct(x), mean)
    if likelihood == "bernoulli":
        out[f"nats_{name}"] = rd.bernoulli_nats(x, m.reconstruct(x))
out["spearman"] = rd.spearman(m.sparsity_posterior(xte) @ m.sparsity_levels, Lte)
out["nnz"] = float((m.encode(xte) != 0).sum(1).mean())
out["true_nnz"] = float(Lte.mean())
if likelihood == "normal":
    out["sigma_mean"] = float(m.model_.likelihood.scale().detach().mean())
print(json.dumps(out))
