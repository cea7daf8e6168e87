"""Prototype: the noiseless set likelihood log P(L=|y|) + sum_{k in y} log p_k (scratch)."""
import sys, time, json, copy
from pathlib import Path
import numpy as np, torch, tomllib
torch.set_num_threads(1)
from experiments.multilabel_suite import load_dataset, settings_for, DEFAULT_BIBTEX
from pyro_sdlgm.analysis.metrics import precision_at_k
from pyro_sdlgm import validation_split
cfg = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("multilabel_suite.toml").read_text())
data = sys.argv[1]; opts = json.loads(sys.argv[2]); seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
train, test = load_dataset({"kind": data, "path": DEFAULT_BIBTEX, "settings": settings_for(cfg, data, False)})
X, Y, Xt, Yt = train.X.toarray().astype(np.float32), train.Y.toarray().astype(np.float32), test.X.toarray().astype(np.float32), test.Y.toarray().astype(np.float32)
if data == "yeast":
    mu, sd = X.mean(0), X.std(0) + 1e-8; X = (X - mu) / sd; Xt = (Xt - mu) / sd
if opts.get("norm"):
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-8); Xt = Xt / np.maximum(np.linalg.norm(Xt, axis=1, keepdims=True), 1e-8)
if opts.get("idf"):
    idf = np.log((1 + len(X)) / (1 + (X > 0).sum(0))) + 1; X = X * idf; Xt = Xt * idf
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-8); Xt = Xt / np.maximum(np.linalg.norm(Xt, axis=1, keepdims=True), 1e-8)
X, Xt = X.astype(np.float32), Xt.astype(np.float32)
L0 = opts.get("L0", 10 if data == "bibtex" else 14)
fit_rows, val_rows = validation_split(len(X), opts.get("valfrac", 0.1), seed)
torch.manual_seed(seed)
D, K = X.shape[1], Y.shape[1]
H = opts.get("hidden", 256); drop = opts.get("dropout", 0.0); in_drop = opts.get("input_dropout", 0.0)
class Net(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.trunk = torch.nn.Sequential(torch.nn.Dropout(in_drop), torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Dropout(drop))
        s.count = torch.nn.Linear(H, L0); s.labels = torch.nn.Linear(H, K)
        s.wide = torch.nn.Linear(D, K) if opts.get("wide") else None
    def forward(s, x):
        h = s.trunk(x); z = s.labels(h) * (0 if opts.get("linear") else 1)
        if s.wide is not None: z = z + s.wide(x)
        return s.count(h), z
from pyro_sdlgm.model.conditional import shortlist_candidates
def loss_fn(net, x, y, train=False):
    c, z = net(x)
    cnt = y.sum(-1).clamp(1, L0).long() - 1
    lc = torch.nn.functional.cross_entropy(c, cnt, reduction="none")
    C = opts.get("shortlist")
    if C and train:
        cand = shortlist_candidates(z.detach(), y, C, opts.get("hard", 0.5))
        zc, yc = z.gather(-1, cand), y.gather(-1, cand)
        return (lc - (yc * zc.log_softmax(-1)).sum(-1)).mean()
    return (lc - (y * z.log_softmax(-1)).sum(-1)).mean()
Xf, Yf = torch.tensor(X[fit_rows]), torch.tensor(Y[fit_rows]); Xv, Yv = torch.tensor(X[val_rows]), torch.tensor(Y[val_rows])
bs = opts.get("bs", 128); t = time.time()
def member(m):
    torch.manual_seed(seed * 100 + m); g = torch.Generator().manual_seed(seed * 100 + m)
    net = Net(); opt = torch.optim.Adam(net.parameters(), lr=opts.get("lr", 1e-3))
    best, state, stale = np.inf, None, 0
    for ep in range(100):
        net.train()
        for rows in torch.randperm(len(Xf), generator=g).split(bs):
            l = loss_fn(net, Xf[rows], Yf[rows], True); opt.zero_grad(); l.backward(); opt.step()
        net.eval()
        with torch.no_grad(): v = float(loss_fn(net, Xv, Yv))
        if v < best: best, state, stale = v, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= 10: break
    net.load_state_dict(state); return net
nets = [member(m) for m in range(opts.get("ens", 1))]
secs = time.time() - t
with torch.no_grad():
    pv = sum(n(Xv)[1].softmax(-1) for n in nets).numpy(); pt = sum(n(torch.tensor(Xt))[1].softmax(-1) for n in nets).numpy()
    single = nets[0](torch.tensor(Xt))[1].numpy()
print(json.dumps(dict(data=data, opts=opts, seed=seed, secs=round(secs, 1), val_p1=round(precision_at_k(Y[val_rows], pv, 1), 4),
      p1=round(precision_at_k(Yt, pt, 1), 4), p3=round(precision_at_k(Yt, pt, 3), 4), single_p1=round(precision_at_k(Yt, single, 1), 4))))
