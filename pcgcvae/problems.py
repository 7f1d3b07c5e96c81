"""Problem families, assembled with Firedrake.

* Poisson  -∇·(κ∇u) = f  with heterogeneous κ: log-normal random fields
  (random Fourier features of a Gaussian covariance, with correlation length
  and contrast as parameters) or piecewise-constant inclusions with jumps;
  P1/P2; meshes: structured squares, randomly perturbed squares, L-shapes,
  squares with a hole, discs.
* Linear elasticity in 2D/3D with a varying Young's modulus field and Poisson
  ratio up to nearly incompressible; P1/P2; clamped on one side.

``random_spec(..., broad=True)`` (``python -m pcgcvae.training.dataset --broad``) widens both
families along the axes users bring (drawn from a second random stream, so the
default draws stay what they were): P1/P2 and Q1 (quadrilateral and hexahedral
meshes), 3D Poisson, rotated anisotropy down to ε = 1e-3, coefficient jumps up to
1e6, a reaction (mass) term, Dirichlet conditions on part of the boundary only
(or none, with a reaction term), and for elasticity ν up to 0.49 and Q1.

Every random parameter enters the forms through ``Constant``s, so the forms
compile once per family and the same seed gives the same problem in serial
and in parallel.  Dirichlet rows come out as Firedrake assembles them
(identity rows and columns).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

N_MODES = 16
N_INCLUSIONS = 6
MESHES_2D = ("square", "perturbed", "lshape", "hole", "disc")  # the default draw (broad adds "quad")
MESHES_3D = ("cube", "hex")
BOUNDARY_CONDITIONS = ("all", "left", "two", "none")  # Dirichlet on: the whole boundary, x = 0, x = 0 and y = 0
TENSOR_MESHES = ("quad", "hex")  # quadrilateral / hexahedral cells: Q elements
STENCIL_MESHES = ("fd5", "fd7")  # finite-difference grids, 5-point (2D) / 7-point (3D) stencils: stencil_spec
# Held out of all training for good, so that the foreign suite (pcgcvae.foreign) stays foreign when the
# models are retrained: P3 (and higher) elements and Q2 (and higher).  The suite's other held-out
# families (9- and 27-point stencils, PETSc's tutorials, the Stokes velocity block) are not Firedrake
# problems of this module at all.
HELD_OUT = "P3 and higher Lagrange elements, Q2 and higher tensor-product elements"


def check_trainable(spec: ProblemSpec) -> None:
    """Refuse (ValueError) a problem of a family held out of all training (:data:`HELD_OUT`)."""
    if spec.degree >= 3 or (spec.mesh in TENSOR_MESHES and spec.degree >= 2):
        element = f"Q{spec.degree}" if spec.mesh in TENSOR_MESHES else f"P{spec.degree}"
        raise ValueError(
            f"{element} {spec.family} problems are held out of all training for good ({HELD_OUT}): the "
            "foreign-problem suite (python -m pcgcvae.bench --suite foreign) evaluates the models on them"
        )


@dataclass
class ProblemSpec:
    """Everything needed to rebuild a problem: family, mesh, discretisation, parameters, seed."""

    family: str  # "poisson" | "elasticity"
    size: int  # cells per side (disc: refinement level)
    degree: int = 1
    mesh: str = "square"
    dim: int = 2
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_spec(family: str, size: int, seed: int, dim: int | None = None,
                degree: int | None = None, mesh: str | None = None, broad: bool = False,
                stencils: bool = False, mass: bool = False) -> ProblemSpec:
    """Draw the parameters of one problem of ``family`` from ``seed`` (``broad``: the wider
    distribution of :func:`broad_spec`; ``stencils``: the finite-difference grids of
    :func:`stencil_spec`; ``mass``: the mass-dominated operators of :func:`mass_spec`)."""
    if mass and stencils:
        raise ValueError("choose one generator: mass-dominated problems (mass) are Firedrake meshes, not stencils")
    if mass:
        return mass_spec(family, size, seed, dim=dim)
    if stencils:
        return stencil_spec(family, size, seed, dim=dim)
    if broad:
        return broad_spec(family, size, seed, dim=dim)
    rng = np.random.default_rng(seed)
    if family == "poisson":
        params = {
            "kappa": str(rng.choice(["lognormal", "lognormal", "jumps"])),
            "sigma": float(rng.uniform(0.5, 2.0)),
            "corr": float(rng.uniform(0.05, 0.4)),
            "contrast": float(10 ** rng.uniform(1, 4)),
        }
        return ProblemSpec(
            family, size,
            degree=degree or int(rng.choice([1, 1, 2])),
            mesh=mesh or str(rng.choice(MESHES_2D)),
            dim=2, seed=seed, params=params,
        )
    if family == "elasticity":
        params = {
            "E_sigma": float(rng.uniform(0.0, 1.5)),
            "corr": float(rng.uniform(0.1, 0.5)),
            "nu": float(rng.uniform(0.2, 0.45)),
        }
        d = dim or int(rng.choice([2, 2, 3]))
        if d == 3:  # keep 3D problems comparable in dofs to 2D ones of the same size: P1, half the cells per side
            size, degree = max(2, (size + 1) // 2), degree or 1
        return ProblemSpec(
            family, size,
            degree=degree or int(rng.choice([1, 1, 2])),
            mesh=mesh or ("square" if d == 3 else str(rng.choice(["square", "perturbed", "lshape", "hole"]))),
            dim=d, seed=seed, params=params,
        )
    raise ValueError(f"unknown problem family '{family}' (poisson, elasticity)")


def broad_spec(family: str, size: int, seed: int, dim: int | None = None) -> ProblemSpec:
    """One problem of the broad training distribution: the default draw of ``seed``
    (:func:`random_spec`) with elements, meshes, dimension, coefficients and boundary
    conditions redrawn from the stream ``(seed, 1)``."""
    base = random_spec(family, size, seed, dim=dim)
    rng = np.random.default_rng([seed, 1])
    params = dict(base.params)
    d = dim or int(rng.choice([2, 2, 2, 3]))
    if d == 3:  # P1 / Q1 with half the cells per side, P2 with a quarter: dofs comparable to 2D
        mesh = str(rng.choice(MESHES_3D))
        degree = 1 if mesh in TENSOR_MESHES else int(rng.choice([1, 1, 2]))
        size = max(2, (size + 1) // 2) if degree == 1 else max(2, (size + 3) // 4)
    else:
        mesh = str(rng.choice((*MESHES_2D, "quad")))
        degree = 1 if mesh in TENSOR_MESHES else int(rng.choice([1, 1, 2]))  # P3, Q2: HELD_OUT
    if family == "poisson":
        kind = str(rng.choice(["lognormal", "jumps", "aniso"]))
        params["kappa"] = kind
        params["contrast"] = float(10 ** rng.uniform(1, 6))
        if kind == "aniso":
            params["aniso_eps"] = float(10 ** rng.uniform(-3, 0))
            params["aniso_angle"] = float(rng.uniform(0, np.pi))
        params["reaction"] = float(10 ** rng.uniform(0, 4)) if rng.uniform() < 0.25 else 0.0
        bcs = ["all", "all", "left", "two"] + (["none"] if params["reaction"] > 0 else [])
        params["bc"] = str(rng.choice(bcs))
    else:
        params["nu"] = float(rng.uniform(0.2, 0.49))
    return ProblemSpec(family, size, degree=degree, mesh=mesh, dim=d, seed=seed, params=params)


def mass_spec(family: str, size: int, seed: int, dim: int | None = None) -> ProblemSpec:
    """One mass-dominated (reaction-diffusion) Poisson problem: the broad draw of ``seed``
    (:func:`broad_spec`: elements, meshes, dimension, coefficients) with a reaction term c u,
    c = 10^U(2, 6), so that c h² ranges from about a tenth of the diffusion to ten thousand times it
    (8-28 cells per side), and any of the boundary conditions, Neumann included.  Where the mass
    term dominates, FSAI is nearly exact and a learned correction should vanish.  Drawn from the
    stream ``(seed, 3)``; Poisson only."""
    if family != "poisson":
        raise ValueError(f"mass-dominated problems are scalar reaction-diffusion: family poisson, not {family}")
    base = broad_spec(family, size, seed, dim=dim)
    rng = np.random.default_rng([seed, 3])
    params = {**base.params, "reaction": float(10 ** rng.uniform(2, 6)), "bc": str(rng.choice(BOUNDARY_CONDITIONS))}
    return ProblemSpec(family, base.size, degree=base.degree, mesh=base.mesh, dim=base.dim, seed=seed, params=params)


def stencil_spec(family: str, size: int, seed: int, dim: int | None = None) -> ProblemSpec:
    """One finite-difference diffusion problem (:data:`STENCIL_MESHES`: the 5-point stencil on a
    2D grid of 2·size interior points per side, the 7-point one on a 3D grid of size/2 + 2): cell
    coefficients log-normal, with inclusions of contrast up to 1e6, or axis-aligned anisotropy down
    to ε = 1e-3, a reaction term on a quarter of them; Dirichlet values eliminated.  Drawn from the
    stream ``(seed, 2)``; Poisson only (``family`` must be ``poisson``)."""
    if family != "poisson":
        raise ValueError(f"finite-difference stencil problems are scalar diffusion: family poisson, not {family}")
    rng = np.random.default_rng([seed, 2])
    d = dim or int(rng.choice([2, 3]))
    kind = str(rng.choice(["lognormal", "jumps", "aniso"]))
    params = {
        "kappa": kind,
        "sigma": float(rng.uniform(0.5, 2.0)),
        "corr": float(rng.uniform(0.05, 0.4)),
        "contrast": float(10 ** rng.uniform(1, 6)),
        "aniso_eps": float(10 ** rng.uniform(-3, 0)) if kind == "aniso" else 1.0,
        "aniso_axis": int(rng.integers(d)),
        "reaction": float(10 ** rng.uniform(-3, 1)) if rng.uniform() < 0.25 else 0.0,
    }
    m = 2 * size if d == 2 else size // 2 + 2
    return ProblemSpec(family, m, degree=1, mesh=STENCIL_MESHES[d - 2], dim=d, seed=seed, params=params)


# --------------------------------------------------------------------- meshes
# PETSc's "simple" partitioner (contiguous blocks of the serial cell numbering: strips or slabs of these
# structured meshes) makes a parallel problem the same on every run.  PT-Scotch, Firedrake's default with
# this PETSc, gives a different partition per run (seen as 397 / 407 / 406 unpreconditioned CG iterations
# for the same 2-rank problem), so parallel iteration counts would not be reproducible.
DISTRIBUTION = {"partitioner_type": "simple"}

def _masked_grid_mesh(n: int, keep, comm):  # noqa: ANN001, ANN202
    """Triangulated n x n grid of the unit square keeping the cells whose centre satisfies ``keep``."""
    import firedrake as fd
    from petsc4py import PETSc

    xs = np.linspace(0.0, 1.0, n + 1)
    vid = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    cells = []
    for i in range(n):
        for j in range(n):
            cx, cy = (xs[i] + xs[i + 1]) / 2, (xs[j] + xs[j + 1]) / 2
            if keep(cx, cy):
                a, b, c, d = vid[i, j], vid[i + 1, j], vid[i + 1, j + 1], vid[i, j + 1]
                cells += [(a, b, c), (a, c, d)]
    cells = np.array(cells, dtype=PETSc.IntType)
    used = np.unique(cells)
    remap = -np.ones((n + 1) ** 2, dtype=np.int64)
    remap[used] = np.arange(len(used))
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    coords = np.column_stack([X.ravel(), Y.ravel()])[used]
    if comm.rank == 0:
        plex = PETSc.DMPlex().createFromCellList(2, remap[cells].astype(PETSc.IntType), coords, comm=comm)
    else:
        plex = PETSc.DMPlex().createFromCellList(
            2, np.zeros((0, 3), dtype=PETSc.IntType), np.zeros((0, 2)), comm=comm
        )
    return fd.Mesh(plex, comm=comm, distribution_parameters=DISTRIBUTION)


def build_mesh(spec: ProblemSpec, comm=None):  # noqa: ANN001, ANN201
    """The mesh of ``spec`` (2D kinds in MESHES_2D, or the unit cube in 3D), partitioned
    reproducibly in parallel (see :data:`DISTRIBUTION`)."""
    import firedrake as fd

    comm = comm or fd.COMM_WORLD
    n = spec.size
    if spec.dim == 3:
        return fd.UnitCubeMesh(n, n, n, hexahedral=spec.mesh == "hex", comm=comm,
                               distribution_parameters=DISTRIBUTION)
    if spec.mesh == "quad":
        return fd.UnitSquareMesh(n, n, quadrilateral=True, comm=comm, distribution_parameters=DISTRIBUTION)
    if spec.mesh == "square":
        return fd.UnitSquareMesh(n, n, comm=comm, distribution_parameters=DISTRIBUTION)
    if spec.mesh == "perturbed":
        mesh = fd.UnitSquareMesh(n, n, comm=comm, distribution_parameters=DISTRIBUTION)
        x = mesh.coordinates.dat.data_ro
        # Deterministic "random" shift from the coordinates (same in parallel).
        h = 1.0 / n
        phase = np.sin(x[:, 0] * 12.9898 + x[:, 1] * 78.233 + spec.seed) * 43758.5453
        r1 = phase - np.floor(phase) - 0.5
        phase2 = np.sin(x[:, 0] * 39.3468 + x[:, 1] * 11.135 + spec.seed) * 24634.6345
        r2 = phase2 - np.floor(phase2) - 0.5
        interior = (x[:, 0] > 1e-12) & (x[:, 0] < 1 - 1e-12) & (x[:, 1] > 1e-12) & (x[:, 1] < 1 - 1e-12)
        shift = 0.5 * h * np.column_stack([r1, r2]) * interior[:, None]
        mesh.coordinates.dat.data[:] = x + shift
        return mesh
    if spec.mesh == "lshape":
        return _masked_grid_mesh(n, lambda cx, cy: not (cx > 0.5 and cy > 0.5), comm)
    if spec.mesh == "hole":
        return _masked_grid_mesh(n, lambda cx, cy: (cx - 0.5) ** 2 + (cy - 0.5) ** 2 > 0.2**2, comm)
    if spec.mesh == "disc":
        level = max(1, round(math.log2(max(n, 2))) - 1)
        return fd.UnitDiskMesh(refinement_level=level, comm=comm, distribution_parameters=DISTRIBUTION)
    raise ValueError(f"unknown mesh kind '{spec.mesh}' ({', '.join(MESHES_2D)})")


# ------------------------------------------------------------------ fields
def _fourier_field(mesh, rng: np.random.Generator, corr: float):  # noqa: ANN001, ANN202
    """A zero-mean, unit-variance Gaussian-like field (random Fourier features)."""
    import firedrake as fd

    dim = mesh.geometric_dimension
    x = fd.SpatialCoordinate(mesh)
    w = fd.Constant(rng.normal(0.0, 1.0 / corr, size=(N_MODES, dim)))
    phi = fd.Constant(rng.uniform(0.0, 2 * np.pi, size=N_MODES))
    amp = math.sqrt(2.0 / N_MODES)
    return sum(amp * fd.cos(sum(w[k, d] * x[d] for d in range(dim)) + phi[k]) for k in range(N_MODES))


def _jump_field(mesh, rng: np.random.Generator, contrast: float):  # noqa: ANN001, ANN202
    """Background 1 with circular inclusions of values in [1/contrast, contrast]."""
    import firedrake as fd

    x = fd.SpatialCoordinate(mesh)
    c = fd.Constant(rng.uniform(0.0, 1.0, size=(N_INCLUSIONS, 2)))
    r = fd.Constant(rng.uniform(0.05, 0.25, size=N_INCLUSIONS))
    v = fd.Constant(contrast ** rng.uniform(-1.0, 1.0, size=N_INCLUSIONS))
    kappa = 1.0
    for k in range(N_INCLUSIONS):
        inside = (x[0] - c[k, 0]) ** 2 + (x[1] - c[k, 1]) ** 2 < r[k] ** 2
        kappa = fd.conditional(inside, v[k], kappa)
    return kappa


# ----------------------------------------------------------------- problems
class Problem:
    """A discretised linear problem: forms, boundary conditions and spec."""

    def __init__(self, spec: ProblemSpec, V, a, L, bcs, near_nullspace=None) -> None:  # noqa: ANN001
        self.spec = spec
        self.V = V
        self.a = a
        self.L = L
        self.bcs = bcs
        self.near_nullspace = near_nullspace

    @property
    def block_size(self) -> int:
        return self.V.block_size

    def assemble_matrix(self):  # noqa: ANN201
        """The assembled operator as a PETSc matrix (AIJ, Firedrake's Dirichlet rows)."""
        import firedrake as fd

        A = fd.assemble(self.a, bcs=self.bcs, mat_type="aij")
        return A.petscmat

    def solve(self, solver_parameters: dict, options_prefix: str | None = None):  # noqa: ANN201
        """Solve with ``solver_parameters``; returns (solution, the KSP)."""
        import firedrake as fd

        u = fd.Function(self.V)
        problem = fd.LinearVariationalProblem(self.a, self.L, u, bcs=self.bcs)
        solver = fd.LinearVariationalSolver(
            problem, solver_parameters=solver_parameters, options_prefix=options_prefix,
            near_nullspace=self.near_nullspace,
        )
        solver.snes.ksp.setConvergenceHistory()
        solver.solve()
        return u, solver.snes.ksp


def _rotation(dim: int, angle: float, eps: float):  # noqa: ANN202
    """The anisotropy tensor R diag(1, .., eps) Rᵀ (rotation by ``angle`` about the z / x axis)."""
    import firedrake as fd

    c, s = math.cos(angle), math.sin(angle)
    if dim == 2:
        r = np.array([[c, -s], [s, c]])
    else:
        r = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return fd.Constant(r @ np.diag([1.0] * (dim - 1) + [eps]) @ r.T)


def _dirichlet_boundary(spec: ProblemSpec) -> str | tuple[int, ...] | None:
    """Where u = 0: the whole boundary, or on boxes x = 0 (``left``) / x = 0 and y = 0 (``two``)."""
    bc = spec.params.get("bc", "all")
    boxed = spec.dim == 3 or spec.mesh in ("square", "perturbed", "quad")
    if bc == "none":
        return None
    if bc == "all" or not boxed:
        return "on_boundary"
    return (1,) if bc == "left" else (1, 3)


def poisson(spec: ProblemSpec, comm=None) -> Problem:  # noqa: ANN001
    """-∇·(K∇u) + c u = 1 with u = 0 on the whole boundary (by default) or a part of it;
    K = κ (log-normal or jumps) or κ times a rotated anisotropy tensor, c >= 0."""
    import firedrake as fd

    mesh = build_mesh(spec, comm)
    rng = np.random.default_rng(spec.seed)
    p = spec.params
    if p.get("kappa", "lognormal") == "jumps":
        kappa = _jump_field(mesh, rng, p.get("contrast", 100.0))
    elif p.get("kappa") == "constant":
        kappa = fd.Constant(1.0)
    else:
        kappa = fd.exp(p.get("sigma", 1.0) * _fourier_field(mesh, rng, p.get("corr", 0.2)))
    V = fd.FunctionSpace(mesh, "CG", spec.degree)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    if p.get("kappa") == "aniso":
        a = kappa * fd.inner(fd.dot(_rotation(spec.dim, p["aniso_angle"], p["aniso_eps"]), fd.grad(u)),
                             fd.grad(v)) * fd.dx
    else:
        a = kappa * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    if p.get("reaction", 0.0) > 0:
        a = a + fd.Constant(p["reaction"]) * u * v * fd.dx
    L = fd.Constant(1.0) * v * fd.dx
    where = _dirichlet_boundary(spec)
    bcs = [] if where is None else [fd.DirichletBC(V, 0.0, where)]
    return Problem(spec, V, a, L, bcs)


def rigid_body_modes(V):  # noqa: ANN001, ANN201
    """Near-nullspace of linear elasticity (translations and rotations) for GAMG."""
    import firedrake as fd

    mesh = V.mesh()
    x = fd.SpatialCoordinate(mesh)
    dim = mesh.geometric_dimension
    if dim == 2:
        exprs = [fd.Constant((1, 0)), fd.Constant((0, 1)), fd.as_vector([-x[1], x[0]])]
    else:
        exprs = [fd.Constant((1, 0, 0)), fd.Constant((0, 1, 0)), fd.Constant((0, 0, 1)),
                 fd.as_vector([-x[1], x[0], 0]), fd.as_vector([0, -x[2], x[1]]), fd.as_vector([x[2], 0, -x[0]])]
    basis = [fd.assemble(fd.interpolate(e, V)) for e in exprs]
    nsp = fd.VectorSpaceBasis(basis)
    nsp.orthonormalize()
    return nsp


def elasticity(spec: ProblemSpec, comm=None) -> Problem:  # noqa: ANN001
    """Linear elasticity with E = exp(E_sigma * field), Poisson ratio nu, clamped at x = 0."""
    import firedrake as fd

    mesh = build_mesh(spec, comm)
    rng = np.random.default_rng(spec.seed)
    p = spec.params
    E = fd.exp(p.get("E_sigma", 0.0) * _fourier_field(mesh, rng, p.get("corr", 0.3)))
    nu = fd.Constant(p.get("nu", 0.3))
    mu = E / (2 * (1 + nu))
    lam = E * nu / ((1 + nu) * (1 - 2 * nu))
    V = fd.VectorFunctionSpace(mesh, "CG", spec.degree)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)

    def eps(w):  # noqa: ANN001, ANN202
        return fd.sym(fd.grad(w))

    def sigma(w):  # noqa: ANN001, ANN202
        return 2 * mu * eps(w) + lam * fd.tr(eps(w)) * fd.Identity(spec.dim)

    a = fd.inner(sigma(u), eps(v)) * fd.dx
    g = [0.0] * (spec.dim - 1) + [-1.0]
    L = fd.inner(fd.Constant(g), v) * fd.dx
    # Clamped at x = 0 on boxes (marker 1); on the whole boundary otherwise.
    clamp = 1 if (spec.dim == 3 or spec.mesh in ("square", "perturbed", "quad")) else "on_boundary"
    bcs = [fd.DirichletBC(V, fd.Constant([0.0] * spec.dim), clamp)]
    return Problem(spec, V, a, L, bcs, near_nullspace=rigid_body_modes(V))


class StencilProblem:
    """A finite-difference problem of :func:`stencil_spec` (serial; no Firedrake)."""

    block_size = 1
    near_nullspace = None

    def __init__(self, spec: ProblemSpec) -> None:
        self.spec = spec

    def matrix(self):  # noqa: ANN201
        """The operator as a scipy CSR matrix (natural order, x fastest)."""
        from .stencils import coupled_matrix, face_weights

        spec, p = self.spec, self.spec.params
        m, d = spec.size, spec.dim
        rng = np.random.default_rng([spec.seed, 3])
        g = (np.arange(m + 1) + 0.5) / (m + 1)  # cell centres: cell c lies between grid points c - 1 and c
        x = np.meshgrid(*([g] * d), indexing="ij")
        if p["kappa"] == "jumps":
            kappa = np.ones((m + 1,) * d)
            c = rng.uniform(0.0, 1.0, size=(N_INCLUSIONS, d))
            r = rng.uniform(0.05, 0.25, size=N_INCLUSIONS)
            v = p["contrast"] ** rng.uniform(-1.0, 1.0, size=N_INCLUSIONS)
            for k in range(N_INCLUSIONS):
                kappa[sum((x[i] - c[k, i]) ** 2 for i in range(d)) < r[k] ** 2] = v[k]
        else:  # log-normal (also under the anisotropy)
            w = rng.normal(0.0, 1.0 / p["corr"], size=(N_MODES, d))
            phi = rng.uniform(0.0, 2 * np.pi, size=N_MODES)
            field_ = sum(math.sqrt(2.0 / N_MODES) * np.cos(sum(w[k, i] * x[i] for i in range(d)) + phi[k])
                         for k in range(N_MODES))
            kappa = np.exp(p["sigma"] * field_)
        scale = tuple(p["aniso_eps"] if i == p["aniso_axis"] else 1.0 for i in range(d))
        reaction = p["reaction"] * float(np.mean(kappa))
        return coupled_matrix((m,) * d, face_weights(kappa, scale), reaction=reaction)

    def assemble_matrix(self):  # noqa: ANN201
        """The operator as a sequential PETSc AIJ matrix."""
        from .csr import CSR
        from .petsc_csr import csr_to_mat

        a = self.matrix()
        return csr_to_mat(CSR(a.indptr, a.indices, a.data))


def build_problem(spec: ProblemSpec, comm=None) -> Problem | StencilProblem:  # noqa: ANN001
    """The problem described by ``spec``: Firedrake's, or a finite-difference grid's (serial)."""
    if spec.mesh in STENCIL_MESHES:
        if comm is not None and comm.size > 1:
            raise ValueError("finite-difference stencil problems are assembled serially (one rank)")
        return StencilProblem(spec)
    if spec.family == "poisson":
        return poisson(spec, comm)
    if spec.family == "elasticity":
        return elasticity(spec, comm)
    raise ValueError(f"unknown problem family '{spec.family}' (poisson, elasticity)")
