"""How much can any factor on a fixed pattern beat FSAI in CG iterations?

An upper-bound experiment for the model/training issue, not part of the product:
on one small log-normal Poisson matrix (dense eigenvalues, so n of a few hundred
to a thousand), start from the FSAI factor on the pattern and minimise
log cond(G Â Gᵀ) over G's values directly with Adam (no network), printing CG
iterations (scipy, rtol 1e-8, two right-hand sides) as it goes, against Jacobi
and FSAI.  Plain Adam on this non-smooth objective finds only a few per cent
(and iterations rise again when cond is pushed further), so it is a weak
bound: the GCVAE fine-tuned with a condition-number term (`python -m
pcgcvae.training.train --cond-weight`, the shipped poisson model) gains more (5–6 %).

    python scripts/kappa_headroom.py --size 24 --level 1 --steps 400
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from pcgcvae.csr import scale_symmetric
from pcgcvae.fsai import fsai_values
from pcgcvae.pattern import factor_pattern
from pcgcvae.petsc_csr import csr_to_mat, mat_to_csr
from pcgcvae.problems import ProblemSpec, build_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=24, help="cells per side of the unit square (P1)")
    ap.add_argument("--level", type=int, default=1, choices=[1, 2])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    spec = ProblemSpec("poisson", args.size, 1, "square", 2, seed=args.seed,
                       params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.2})
    a = mat_to_csr(build_problem(spec).assemble_matrix())
    ahat, _ = scale_symmetric(a)
    s, _ = factor_pattern(ahat, csr_to_mat(ahat), args.level, 0.02)
    g_fsai = fsai_values(ahat, s)
    n = a.n
    a_sp = sp.csr_matrix((ahat.data, ahat.indices, ahat.indptr), shape=(n, n))
    rows = s.rows()

    def iterations(values: np.ndarray, rhs_seed: int) -> int:
        g = sp.csr_matrix((values, s.indices, s.indptr), shape=(n, n))
        m = spla.LinearOperator((n, n), matvec=lambda v: g.T @ (g @ v))
        b = np.random.default_rng(rhs_seed).standard_normal(n)
        count = [0]
        spla.cg(a_sp, b, rtol=1e-8, maxiter=50_000, M=m, callback=lambda _: count.__setitem__(0, count[0] + 1))
        return count[0]

    a_dense = torch.tensor(a_sp.toarray())
    tr, tc = torch.tensor(rows), torch.tensor(s.indices)

    def eigenvalues(g: torch.Tensor) -> torch.Tensor:
        gm = torch.zeros(n, n, dtype=g.dtype).index_put((tr, tc), g)
        return torch.linalg.eigvalsh(gm @ a_dense @ gm.T)

    jac = iterations(np.where(s.indices == rows, 1.0, 0.0), 1)
    ev = eigenvalues(torch.tensor(g_fsai))
    its_fsai = (iterations(g_fsai, 1), iterations(g_fsai, 2))
    print(f"n {n}, pattern level {args.level}: Jacobi {jac} its, FSAI {its_fsai} its, "
          f"cond(FSAI) {float(ev[-1] / ev[0]):.2f}")
    g = torch.tensor(g_fsai, requires_grad=True)
    opt = torch.optim.Adam([g], lr=args.lr)
    t0 = time.perf_counter()
    best = min(its_fsai)
    for step in range(args.steps):
        opt.zero_grad()
        ev = eigenvalues(g)
        loss = torch.log(ev[-1]) - torch.log(ev[0])
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            values = g.detach().numpy()
            its = (iterations(values, 1), iterations(values, 2))
            best = min(best, *its)
            print(f"step {step:4d}: cond {float(loss.exp()):.2f}, its {its} ({time.perf_counter() - t0:.0f} s)")
    print(f"best iterations seen {best} vs FSAI {min(its_fsai)}: ratio {best / min(its_fsai):.3f}; "
          f"Jacobi ratio FSAI {min(its_fsai) / jac:.3f}, best {best / jac:.3f}")


if __name__ == "__main__":
    main()
