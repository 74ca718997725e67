#!/usr/bin/env python
"""Can the pressure mix's weights be learned from the params of a few dozen runs?

    python benchmarks/mix_learnability.py --prepped_root PREPPED [--strengths 1 0.1 0.01 0.001 0]
        [--head hat|hat_sigmoid|free|const] [--cold] [--l1 0.02] [--l1_time]
        [--only PARAM ...] [--n_train N] [--seeds 3]

The default model sets each run's pressure change since t = 0 to a mix of one-year
well responses (``well_response.pressure_responses``, one per lateral support
strength) plus a share of their cold-water corrections (``--cold``), with weights
from the run's params and the time. This isolates that part: it takes the
responses from the prepped files (recomputes them for other ``--strengths``),
and trains only a small MLP (params + time feature -> weights) on the training
runs, with the rollout metric itself as the loss (``||sum_k a_k r_k - change_t||
/ ||change_t||`` over active cells, years 1-29, exactly, from per-run Gram
matrices), then reports that error on the test runs. No network over the grid,
no residual: the question is only whether the weights generalize from the
training runs.

Heads: ``hat`` (the model's own: gain x linear interpolation between two
neighbouring strengths, at a clipped linear point, bounded gain and cold share:
model._support_point, model._gain, model.COLD_MAX), ``hat_sigmoid`` (the head
before Nov 27: sigmoid point, gain only clamped, unbounded cold share), ``free``
(any weights), ``const`` (the time feature only: one weight set for every run).
``--l1`` is the penalty on the first layer's |weights| over the params columns
(the model's ``train --mix_l1``; the loss scales differ); ``--l1_time`` puts the
time column under it too, as the model did before Nov 27. ``--only`` restricts
the inputs to the named params (a diagnostic of what the params could tell at
best, not a model choice: a real export's params mean something else).
"""

from __future__ import annotations

import argparse
import glob
import json

import h5py
import numpy as np
import torch

from voxel_ode import schema, well_response
from voxel_ode.dataset import Normalizer
from voxel_ode.model import COLD_INIT, COLD_MAX, MIX_INIT, _gain, _hat, _support_point, mix_head_bias

S = schema.STATIC_NAMES
YEARS = schema.N_TIMESTEPS - 1


def run_terms(path, strengths, normalizer, cold):
    """(Gram matrix [K', K'], B^T change [29, K'], ||change||^2 [29], normalized params [26]) of
    one run; K' = K responses, then their K cold-water corrections with ``cold``."""
    with h5py.File(path, "r") as f:
        static, pressure, params = f["static"][:], f["outputs_grid"][:, 0], f["params_scalar"][:]
    active = static[S.index("IsActive")] > 0.5
    if tuple(strengths) == well_response.SUPPORT_STRENGTHS:  # prep stored them
        names = schema.RESPONSE_NAMES + (schema.COLD_RESPONSE_NAMES if cold else ())
        responses = [static[S.index(n)] for n in names]
    else:
        cell = [params[schema.PARAM_NAMES.index(n)] for n in schema.CELL_SIZE_PARAMS]
        perm = [static[S.index(n)] for n in ("PermX", "PermY", "PermZ")]
        saved = well_response.SUPPORT_STRENGTHS
        well_response.SUPPORT_STRENGTHS = tuple(strengths)
        try:
            responses = well_response.pressure_responses(active, perm, static[S.index("Porosity")],
                                                         static[S.index("Temperature0")], static[S.index("InjRate")],
                                                         cell)
        finally:
            well_response.SUPPORT_STRENGTHS = saved
    basis = np.stack([r[active] for r in responses], 1).astype(np.float64)
    change = np.stack([(pressure[y] - pressure[0])[active] for y in range(1, YEARS + 1)], 1).astype(np.float64)
    return (torch.tensor(basis.T @ basis), torch.tensor(basis.T @ change).T, torch.tensor((change ** 2).sum(0)),
            normalizer.normalize_params(params))


def load_split(root, split, strengths, normalizer, cold, limit=None):
    paths = sorted(glob.glob(f"{root}/{split}/*{schema.PREPPED_SUFFIX}"))[:limit]
    terms = [run_terms(p, strengths, normalizer, cold) for p in paths]
    return tuple(torch.stack(t) for t in zip(*terms))


class WeightHead(torch.nn.Module):
    def __init__(self, n_in, k, kind, cold):
        super().__init__()
        self.k, self.kind, self.cold = k, kind, cold
        n_out = 3 if kind.startswith("hat") else (2 * k if cold else k)  # hat: point, log gain, cold share
        self.mlp = torch.nn.Sequential(torch.nn.Linear(n_in, 64), torch.nn.SiLU(), torch.nn.Linear(64, n_out))
        if kind == "hat":  # the model's start: middle point, gain 1, a small cold share
            with torch.no_grad():
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.copy_(mix_head_bias(MIX_INIT, 1.0, COLD_INIT))

    def forward(self, features):
        """[N, K'] weights of the responses (then of the cold corrections)."""
        out = self.mlp(features)
        if self.kind not in ("hat", "hat_sigmoid"):
            return out
        if self.kind == "hat":  # the model's parametrization
            hat = _hat(_support_point(out[:, 0], self.k), self.k)
            gain, cold = _gain(out[:, 1]), COLD_MAX * torch.sigmoid(out[:, 2:3])
        else:  # the previous one (fidelity8)
            hat = _hat(torch.sigmoid(out[:, 0]) * (self.k - 1), self.k)
            gain, cold = torch.exp(out[:, 1:2].clamp(-10, 5)), out[:, 2:3]
        return torch.cat([hat * gain, hat * cold], 1) if self.cold else hat * gain


def features(params, kind, columns):
    """[runs * 29, F]: the params (or some) and the time feature of input steps 0..28."""
    time = torch.stack([Normalizer.time_feature(t) for t in range(YEARS)])
    n = params.shape[0]
    f = torch.cat([params[:, None].expand(n, YEARS, -1), time[None, :, None].expand(n, YEARS, 1)], 2)
    if kind == "const":
        f = f[..., -1:]
    elif columns is not None:
        f = f[..., columns + [f.shape[-1] - 1]]
    return f.reshape(n * YEARS, -1)


def rel_errors(data, head, kind, columns):
    gram, cross, norm2, params = data
    w = head(features(params, kind, columns)).double().reshape(params.shape[0], YEARS, -1)
    sq = torch.einsum("ntk,nkl,ntl->nt", w, gram, w) - 2 * (w * cross).sum(2) + norm2
    return torch.sqrt(sq.clamp_min(0) / norm2)  # [runs, 29]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepped_root", required=True)
    ap.add_argument("--strengths", type=float, nargs="+", default=list(well_response.SUPPORT_STRENGTHS))
    ap.add_argument("--head", choices=("hat", "hat_sigmoid", "free", "const"), default="hat")
    ap.add_argument("--cold", action="store_true", help="mix the cold-water corrections too (default strengths only)")
    ap.add_argument("--l1", type=float, default=0.0, help="L1 on the first layer's params columns")
    ap.add_argument("--l1_time", action="store_true", help="the time column under the L1 penalty too")
    ap.add_argument("--only", nargs="+", default=None, help="use only these params (diagnostic)")
    ap.add_argument("--n_train", type=int, default=None, help="first N training runs by name")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--grad_clip", type=float, default=1.0, help="as train --grad_clip (0 = off)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    normalizer = Normalizer(json.load(open(f"{args.prepped_root}/{schema.STATS_FILE}")))
    if args.cold and tuple(args.strengths) != well_response.SUPPORT_STRENGTHS:
        ap.error("--cold: the cold-water corrections exist for the default strengths only")
    columns = None if args.only is None else [schema.PARAM_NAMES.index(n) for n in args.only]
    train = load_split(args.prepped_root, "train", args.strengths, normalizer, args.cold, args.n_train)
    test = load_split(args.prepped_root, "test", args.strengths, normalizer, args.cold)
    k = len(args.strengths)
    n_in = features(train[3][:1], args.head, columns).shape[1]
    print(f"{train[3].shape[0]} train / {test[3].shape[0]} test runs, strengths {args.strengths}, head {args.head}, "
          f"cold {args.cold}, l1 {args.l1} (time {'in' if args.l1_time else 'out'}), inputs {args.only or 'all params'} + time")
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        head = WeightHead(n_in, k, args.head, args.cold)
        opt = torch.optim.AdamW(head.parameters(), 3e-3, weight_decay=1e-2)
        for _ in range(args.iters):
            loss = (rel_errors(train, head, args.head, columns) ** 2).mean()
            penalised = head.mlp[0].weight if args.l1_time else head.mlp[0].weight[:, :-1]
            loss = loss + args.l1 * penalised.abs().sum()
            opt.zero_grad()
            loss.backward()
            if args.grad_clip > 0:  # as in training: without it a rare Adam step blows a head up
                torch.nn.utils.clip_grad_norm_(head.parameters(), args.grad_clip)
            opt.step()
        with torch.no_grad():
            tr, te = rel_errors(train, head, args.head, columns), rel_errors(test, head, args.head, columns)
        print(f"seed {seed}: train year 29 {tr[:, -1].mean():.3f} | test year 1 {te[:, 0].mean():.3f}, "
              f"year 29 {te[:, -1].mean():.3f}, mean {te.mean():.3f}; per run year 29 "
              + " ".join(f"{v:.2f}" for v in te[:, -1].tolist()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
