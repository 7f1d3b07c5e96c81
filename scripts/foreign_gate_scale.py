"""A longer or shorter step along the learned correction, on foreign-suite problems (a diagnostic, not the
product).

For each problem (names as in ``docs/bench-foreign/foreign.md``) solve the suite's random right-hand side with
FSAI and with the GCVAE without the guard at pattern levels 1 and 2, the spectral gate's output multiplied by
each of ``--scales`` at run time (0: FSAI's factor itself; 1: the model as shipped), and print the iterations.
The gate multiplies the whole raw correction (G_ij = F_ij + gate out_ij, G_ii = F_ii exp(gate out_ii)), so this
walks along the correction's own direction.

    python scripts/foreign_gate_scale.py --problems p1-aniso-1e-2-delaunay fd9-aniso-1e-2 q1-aniso-1e-3 \\
        [--scales 0 0.5 1 1.5]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", nargs="+", required=True)
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.5, 1.0, 1.5])
    args = ap.parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options
    import firedrake  # noqa: F401  (first: it initialises PETSc)

    from pcgcvae import foreign, inference

    scale = [1.0]
    gate = inference.NumpyGCVAE.gate

    def scaled_gate(self, spectral):  # noqa: ANN001, ANN202
        g = gate(self, spectral)
        if g is None:
            raise SystemExit("the shipped scalar model has no spectral gate: nothing to scale")
        return self.dtype(g * scale[0])

    inference.NumpyGCVAE.gate = scaled_gate
    cases = {c.name: c for c in foreign.all_cases()}
    unknown = [p for p in args.problems if p not in cases]
    if unknown:
        raise SystemExit(f"unknown problems {unknown}; the suite's: {', '.join(cases)}")
    print("| problem | FSAI L1 | " + " | ".join(f"GCVAE L1, gate x {s:g}" for s in args.scales)
          + " | FSAI L2 | " + " | ".join(f"GCVAE L2, gate x {s:g}" for s in args.scales) + " |")
    print("|---|" + "---|" * (2 * len(args.scales) + 2))
    for name in args.problems:
        built = cases[name].build(False)
        b = foreign._random_rhs(built, name)
        cells = [name]
        for fsai, gcvae in (("fsai", "gcvae-noguard"), ("fsai2", "gcvae2-noguard")):
            cells.append(str(foreign.run_pc(built, name, fsai, b)["iterations"]))
            for s in args.scales:
                scale[0] = s
                cells.append(str(foreign.run_pc(built, name, gcvae, b)["iterations"]))
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
