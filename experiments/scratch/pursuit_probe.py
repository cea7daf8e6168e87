"""Probe: does a pursuit through the learned decoder at encode time recover the count the guide misses?

Hypothesis: the amortized support (the guide's picks and their order) is the count's gap on
values near zero; greedy picks that each most reduce the reconstruction cost, with every
prefix's values refitted (a matching pursuit through the fitted decoder), track the true counts
much better on the same fitted model. Refutation: with the same decoder, the pursuit's count
(any of the stopping rules below) stays within 0.05 Spearman of the guide's refined count, or its
supports at the true count are no better than the guide's (support F1 at the oracle count).

The model is fitted once per seed with the library defaults (cached under /tmp), then scored on
the test rows:
  guide         the library's refined count (guide picks and values);
  pursuit_*     pursuit picks, refitted values, count q*(l) ∝ p(l) exp(-R_l - C_l) with
                C_l = sum_{j<l} log(K - j) (the support KL of a point mass under the uniform prior)
                and the value prior; the scale is either the learned one (``learned``),
                re-estimated from the training rows' pursuit residuals (``rescaled``) or the true
                noise (``truenoise``: a diagnostic, not available to users);
  *_at_true     supports at each row's true count (pick quality alone).

    python -m experiments.scratch.pursuit_probe SEED [SETTING] [EPOCHS]
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from experiments import recovery
from experiments import recovery_data as rd
from pyro_sdlgm import SDLGM
from pyro_sdlgm.model.support import greedy_picks

seed = int(sys.argv[1])
setting = sys.argv[2] if len(sys.argv) > 2 else "lg_k40_gauss"
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 100
cfg = recovery.setting_config(setting)
splits = rd.make_splits(cfg, 0)
(xtr, Str, Ltr, _), (xva, _, Lva, _), (xte, Ste, Lte, pte) = splits["train"], splits["val"], splits["test"]
cache = Path(f"/tmp/pursuit_cache/{setting}_s{seed}_e{epochs}.pt")
t0 = time.time()
if cache.exists():
    m = SDLGM.load(cache)
else:
    m = SDLGM(input_dim=cfg["D"], latent_dim=cfg["K"], max_sparsity=cfg["L0"], likelihood="normal")
    m.fit(xtr, validation_data=xva, epochs=epochs, seed=seed, progress=False)
    cache.parent.mkdir(exist_ok=True)
    m.save(cache)
fit_s = time.time() - t0
model, guide = m.model_, m.guide_
model.eval(); guide.eval()
K, L0 = cfg["K"], cfg["L0"]
levels = m.sparsity_levels
prior_scale = float(model.value_prior.scale[0]) if hasattr(model.value_prior, "scale") else 1.0
value_prior = torch.distributions.Normal(0.0, prior_scale)
log_p_level = model.sparsity_prior.logits().log_softmax(-1).detach()
with torch.no_grad():
    empty = model.decoder(torch.zeros(1, K))
    atoms = model.decoder(torch.eye(K)) - empty  # (K, D)
support_cost = torch.cat([torch.zeros(1), torch.log(K - torch.arange(L0, dtype=torch.float32)).cumsum(0)])  # C_0..C_L0


def nll(x, z, scale):
    """-log p(x | decoder(z)) under a normal with per-feature ``scale``, (N,)."""
    return -torch.distributions.Normal(model.decoder(z), scale).log_prob(x).sum(-1)


def pursuit(x, scale, steps=40, lr=0.05):
    """Greedy picks (N, L0), values of every prefix (N, L0, L0) and costs R_0..R_L0 (N, L0 + 1)."""
    x = torch.as_tensor(x)
    n = x.shape[0]
    rows = torch.arange(n)
    hdiag = (atoms.pow(2) / scale.pow(2)).sum(-1)  # Gauss-Newton curvature of each dimension's value
    dead = atoms.norm(dim=-1) < 1e-3 * atoms.norm(dim=-1).max()  # dimensions that change nothing
    picks = torch.zeros(n, L0, dtype=torch.long)
    taken = torch.zeros(n, K, dtype=torch.bool)
    values = torch.zeros(n, 0)
    prefix_values = torch.zeros(n, L0, L0)
    with torch.no_grad():
        costs = [nll(x, torch.zeros(n, K), scale)]
    for j in range(L0):
        z = torch.zeros(n, K).scatter(-1, picks[:, :j], values).requires_grad_(True)
        g, = torch.autograd.grad(nll(x, z, scale).sum(), z)
        gain = (g.pow(2) / hdiag).masked_fill(taken | dead, -1.0)
        k = gain.argmax(-1)
        picks[:, j] = k
        taken[rows, k] = True
        start = (-g[rows, k] / hdiag[k]).clamp(-3 * prior_scale, 3 * prior_scale)
        v = torch.cat([values, start.unsqueeze(-1)], -1).detach().requires_grad_(True)
        opt = torch.optim.Adam([v], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            zz = torch.zeros(n, K).scatter(-1, picks[:, :j + 1], v)
            (nll(x, zz, scale) - value_prior.log_prob(v).sum(-1)).sum().backward()
            opt.step()
        values = v.detach()
        prefix_values[:, j, :j + 1] = values
        with torch.no_grad():
            costs.append(nll(x, torch.zeros(n, K).scatter(-1, picks[:, :j + 1], values), scale))
    return picks, prefix_values, torch.stack(costs, -1)


def count_logits(picks, prefix_values, costs):
    """log q*(l) over the model's levels, (N, num_levels)."""
    vp = torch.stack([value_prior.log_prob(prefix_values[:, j, :j + 1]).sum(-1) for j in range(L0)], -1)
    vp = torch.cat([torch.zeros(vp.shape[0], 1), vp], -1)
    full = -costs - support_cost + vp  # levels 0..L0
    return log_p_level + full[:, torch.as_tensor(levels)]


def code_at(picks, prefix_values, count):
    n = picks.shape[0]
    count = torch.as_tensor(count)
    vals = prefix_values[torch.arange(n), (count - 1).clamp_min(0)]
    vals = vals * (torch.arange(L0) < count.unsqueeze(-1))
    return torch.zeros(n, K).scatter(-1, picks, vals)


def scores(tag, codes_tr, codes_te, probs=None):
    with torch.no_grad():
        x_hat = model.likelihood.mean(model.decoder(torch.as_tensor(codes_te))).numpy()
    nnz = (codes_te != 0).sum(1)
    r = rd.code_recovery(codes_tr, Str[:len(codes_tr)], codes_te, Ste, Lte)
    out[tag] = {"spearman": rd.spearman(probs @ levels if probs is not None else nnz, Lte),
                "spearman_mode": rd.spearman(nnz, Lte), "ev": rd.explained_variance(xte, x_hat, xtr.mean(0)),
                "nnz": float(nnz.mean()), "support_f1": r["support_f1"]}


out = {"seed": seed, "setting": setting, "epochs": epochs, "fit_s": fit_s, "true_nnz": float(Lte.mean())}
learned = model.likelihood.scale().detach()
out["sigma_learned"] = float(learned.mean())
ntr = 1500
# the guide's own codes: refined count, and its picks at the true count
Ztr_g, Zte_g = m.encode(xtr[:ntr]), m.encode(xte)
scores("guide", Ztr_g, Zte_g, m.sparsity_posterior(xte))
with torch.no_grad():
    def guide_at_true(x, L):
        p = guide.amortize(torch.as_tensor(x))
        picks = greedy_picks(p.slot_logits, L0)
        vals = p.value_loc.gather(-1, picks) * (torch.arange(L0) < torch.as_tensor(L).unsqueeze(-1))
        return torch.zeros(len(x), K).scatter(-1, picks, vals).numpy()
    scores("guide_at_true", guide_at_true(xtr[:ntr], Ltr[:ntr]), guide_at_true(xte, Lte))

t = time.time()
variants = {"learned": learned, "truenoise": torch.full_like(learned, cfg["noise"])}
for name, scale in variants.items():
    ptr, vtr, ctr = pursuit(xtr[:ntr], scale)
    pte_, vte, cte = pursuit(xte, scale)
    if name == "learned":
        scores("pursuit_at_true", code_at(ptr, vtr, Ltr[:ntr]).numpy(), code_at(pte_, vte, Lte).numpy())
    lt, le = count_logits(ptr, vtr, ctr), count_logits(pte_, vte, cte)
    scores(f"pursuit_{name}", code_at(ptr, vtr, torch.as_tensor(levels)[lt.argmax(-1)]).numpy(),
           code_at(pte_, vte, torch.as_tensor(levels)[le.argmax(-1)]).numpy(), le.softmax(-1).numpy())
    out[f"pursuit_{name}"]["seconds"] = time.time() - t
# the scale re-estimated from the training rows' pursuit residuals at their own count
scale = learned
for round_ in range(3):
    ptr, vtr, ctr = pursuit(xtr[:ntr], scale)
    best = torch.as_tensor(levels)[count_logits(ptr, vtr, ctr).argmax(-1)]
    with torch.no_grad():
        resid = torch.as_tensor(xtr[:ntr]) - model.decoder(code_at(ptr, vtr, best))
    scale = resid.pow(2).mean(0).sqrt().clamp_min(1e-3)
    out[f"sigma_round{round_}"] = float(scale.mean())
    ptr, vtr, ctr = pursuit(xtr[:ntr], scale)
    pte_, vte, cte = pursuit(xte, scale)
    lt, le = count_logits(ptr, vtr, ctr), count_logits(pte_, vte, cte)
    scores(f"pursuit_rescaled_{round_}", code_at(ptr, vtr, torch.as_tensor(levels)[lt.argmax(-1)]).numpy(),
           code_at(pte_, vte, torch.as_tensor(levels)[le.argmax(-1)]).numpy(), le.softmax(-1).numpy())
out["pursuit_s"] = time.time() - t
print(json.dumps(out))
