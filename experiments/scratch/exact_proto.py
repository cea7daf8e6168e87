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
fit_rows, val_rows = validation_split(len(X), 0.1, seed)
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
net = Net()
opt = torch.optim.Adam(net.parameters(), lr=opts.get("lr", 1e-3), weight_decay=opts.get("wd", 0.0))
def loss_fn(x, y):
    c, z = net(x)
    cnt = y.sum(-1).clamp(1, L0).long() - 1
    lc = torch.nn.functional.cross_entropy(c, cnt, reduction="none")
    kind = opts.get("loss", "pal")
    if kind == "pal":
        ll = -(y * z.log_softmax(-1)).sum(-1)
    elif kind == "bce":
        ll = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)
    elif kind == "both":
        ll = -(y * z.log_softmax(-1)).sum(-1) + torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)
    return (lc + ll).mean()
Xf, Yf = torch.tensor(X[fit_rows]), torch.tensor(Y[fit_rows]); Xv, Yv = torch.tensor(X[val_rows]), torch.tensor(Y[val_rows])
bs = opts.get("bs", 128); g = torch.Generator().manual_seed(seed)
best, state, stale = np.inf, None, 0; t = time.time()
for ep in range(opts.get("epochs", 100)):
    net.train()
    for rows in torch.randperm(len(Xf), generator=g).split(bs):
        l = loss_fn(Xf[rows], Yf[rows]); opt.zero_grad(); l.backward(); opt.step()
    net.eval()
    with torch.no_grad(): v = float(loss_fn(Xv, Yv))
    if v < best: best, state, stale = v, copy.deepcopy(net.state_dict()), 0
    else:
        stale += 1
        if stale >= opts.get("patience", 10): break
net.load_state_dict(state); secs = time.time() - t
with torch.no_grad(): vp1 = precision_at_k(Y[val_rows], net(Xv)[1].numpy(), 1); c, z = net(torch.tensor(Xt))
s = z.numpy(); cnt = c.argmax(-1).numpy() + 1
truth = Yt.sum(1).astype(int)
print(json.dumps(dict(data=data, opts=opts, seed=seed, epochs=ep + 1, secs=round(secs, 1), val_p1=round(vp1, 4), p1=round(precision_at_k(Yt, s, 1), 4),
      p3=round(precision_at_k(Yt, s, 3), 4), p5=round(precision_at_k(Yt, s, 5), 4), count_acc=round(float((cnt == truth).mean()), 4))))
