"""GAMG with the FSAI smoother on the foreign suite: nested-dissection order (FSAIPC's default) against the
order GAMG's levels come in (``-mg_levels_pc_fsai_ordering natural``); the README's "As a smoother inside
GAMG" paragraph.

    python docs/bench-gamg/fsai_smoother_ordering.py > docs/bench-gamg/fsai_smoother_ordering.md

Per problem (the suite's random right-hand side, CG 1e-8 as in ``pcgcvae.foreign``): GAMG's default
iterations and total seconds, then iterations, setup and total seconds of each FSAI-smoother configuration;
seconds are the best of three runs.
"""

import sys

sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options
import firedrake  # noqa: E402, F401  (Firedrake's PETSc first)

from pcgcvae import foreign  # noqa: E402
from pcgcvae.foreign import PC_OPTIONS, _random_rhs, run_pc  # noqa: E402

NATURAL = {**PC_OPTIONS["gamg-fsai-smoother"], "mg_levels_pc_fsai_ordering": "natural"}
CONFIGS = [("gamg", None), ("gamg-fsai-smoother", None), ("gamg-fsai-smoother", NATURAL)]


def best_of_three(built, name: str, pc: str, b, options) -> dict:  # noqa: ANN001
    runs = [run_pc(built, name, pc, b, pc_options=options) for _ in range(3)]
    return min(runs, key=lambda r: r.get("total_s", float("inf")))


print("| problem | GAMG: iterations (total s) | FSAI smoother, nd: iterations, setup s, total s "
      "| FSAI smoother, natural: iterations, setup s, total s |")
print("|---|---|---|---|")
for case in foreign.all_cases():
    built = case.build(False)
    b = _random_rhs(built, case.name)
    g, f, n = (best_of_three(built, case.name, pc, b, options) for pc, options in CONFIGS)
    print(f"| {case.name} | {g['iterations']} ({g['total_s']:.3f}) | {f['iterations']}, {f['setup_s']:.3f}, "
          f"{f['total_s']:.3f} | {n['iterations']}, {n['setup_s']:.3f}, {n['total_s']:.3f} |", flush=True)
