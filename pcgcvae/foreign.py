"""The foreign-problem suite: problems no training generator produces, solved as a new user would.

    python -m pcgcvae.bench --suite foreign                  # ~1e4-5e4 dofs per problem
    python -m pcgcvae.bench --suite foreign --quick          # tiny sizes, a few problems of each kind
    python -m pcgcvae.bench --suite foreign --problems p3-smooth-square c-ex56-elasticity-3d-q1

Four kinds of problem, none of them drawn by :mod:`pcgcvae.problems` / :mod:`pcgcvae.training.dataset`
(the training generators: by default 2D Poisson P1/P2 on squares, perturbed squares, L-shapes, holed
squares and discs with log-normal or inclusion κ, Dirichlet everywhere; 2D/3D elasticity P1/P2 with
ν ≤ 0.45 on square meshes of "left" diagonals, clamped at x = 0; at most 4225 dofs; ``--broad`` adds
Q1, 3D Poisson, anisotropy, reaction and partial boundaries on meshes and coefficients drawn from its
own seeds).  Some families are held out of all training for good, so the suite stays foreign when the
models are retrained: P3 and Q2 elements (the generator refuses them:
:func:`pcgcvae.problems.check_trainable`), 9- and 27-point stencils, PETSc's tutorials and the Stokes
velocity block (no generator produces them); the suite's other problems use meshes, coefficients and
seeds that no training set contains (``tests/test_foreign.py`` checks the matrices):

* ``firedrake``: P1-P3 and Q1/Q2 elements, 2D and 3D, structured meshes of other kinds (quadrilaterals,
  "crossed" diagonals, boxes, the refined disc) and unstructured Delaunay meshes of jittered points;
  rotated anisotropic diffusion, coefficient jumps of 1e6, reaction-diffusion, pure Neumann with a
  ``MatNullSpace`` (consistent right-hand sides), mixed boundary conditions, elasticity up to ν = 0.49
  (P1, P2, Q1; block size and rigid-body near-nullspace set);
* ``fieldsplit``: the velocity block of a Taylor-Hood Stokes problem inside ``PCFIELDSPLIT`` (Schur
  complement, MINRES, pressure mass matrix for the Schur block): the row's preconditioner is the
  velocity block's (``fieldsplit_0_``), applied once per outer iteration;
* ``dmda``: finite-difference 5-, 7-, 9- and 27-point stencils assembled with petsc4py's DMDA in its
  natural (lexicographic) order, no Firedrake;
* ``c-tutorial``: PETSc's own C tutorials that solve SPD systems (``src/ksp/ksp/tutorials``: ex34,
  ex50, ex54, ex55, ex56), compiled against the stack's PETSc and run with ``-python <python>
  -pc_type python -pc_python_type pcgcvae.GCVAEPC`` (column ``iterations_c``: their own right-hand
  side, parsed from ``-ksp_converged_reason``); their operator and right-hand side are also dumped
  (``-ksp_view_mat``/``-ksp_view_rhs binary``) and solved in-process like every other problem.

Every problem is solved with CG (rtol 1e-8, unpreconditioned norm; MINRES for Stokes) on a random
right-hand side (``iterations``, the timed solve) and, where it has one, its own (``iterations_own``).
Rows: Jacobi, ICC(0), FSAI and the GCVAE at pattern levels 1 and 2 (with the default guard and with
``-pc_gcvae_guard_threshold -1``, i.e. without it), GAMG; all with default options (shipped models,
default ordering).  The Kaporin gap is the GCVAE's ``stats['kaporin']`` minus FSAI's on the same
pattern level; the guard columns copy ``stats['guard']`` where the preconditioner reports it.
Writes ``foreign.csv``, ``foreign.json`` (with every operator's fingerprint) and ``foreign.md``.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .pc_options import PRECONDITIONERS
from .stencils import coupled_entries, face_weights

PCS = ["jacobi", "icc", "fsai", "fsai2", "gcvae", "gcvae2", "gcvae-noguard", "gcvae2-noguard", "gamg"]
# not in the default run: the SPAI factors as GAMG's smoothers (``--pcs`` names them)
SMOOTHER_PCS = ["gamg-fsai-smoother", "gamg-gcvae-smoother", "gamg-gcvae-smoother-noguard"]
PC_OPTIONS: dict[str, dict[str, Any]] = {name: dict(PRECONDITIONERS[name]) for name in PCS + SMOOTHER_PCS}
# each GCVAE row and the FSAI row on the same pattern
SAME_PATTERN = {"gcvae": "fsai", "gcvae2": "fsai2", "gcvae-noguard": "fsai", "gcvae2-noguard": "fsai2"}
FIELDS = ["problem", "kind", "description", "dofs", "nnz", "block_size", "pc", "iterations", "converged",
          "iterations_own", "converged_own", "iterations_c", "setup_s", "solve_s", "total_s", "kaporin",
          "kaporin_gap", "guard_estimate", "guard_threshold", "guard_fired", "guard_rows", "guard_signal",
          "guard_start", "guard_alpha", "guard_predicted", "guard_cost_s", "error"]
RTOL = 1e-8
MAX_IT = 20000


# ------------------------------------------------------------------ fingerprints
def fingerprint(csr) -> dict[str, Any]:  # noqa: ANN001
    """Size, nonzeros and two hashes of a sparse matrix (:class:`pcgcvae.csr.CSR`):

    ``exact``: of the sorted CSR structure and the values, bit for bit;
    ``perm``: invariant under a symmetric renumbering (the sorted diagonal, the sorted row lengths
    and the sorted values, relative to the largest, rounded to 9 digits), so that a training
    matrix in another order is caught too."""
    indptr = np.asarray(csr.indptr, dtype=np.int64)
    indices = np.asarray(csr.indices, dtype=np.int64)
    data = np.asarray(csr.data, dtype=np.float64)
    n = len(indptr) - 1
    exact = hashlib.sha256()
    for part in (np.array([n], dtype=np.int64), indptr, indices, data):
        exact.update(np.ascontiguousarray(part).tobytes())
    rows = np.repeat(np.arange(n), np.diff(indptr))
    diag = np.zeros(n)
    on = indices == rows
    diag[rows[on]] = data[on]
    scale = float(np.max(np.abs(data))) if len(data) else 1.0
    scale = scale or 1.0
    perm = hashlib.sha256()
    for part in (np.array([n, len(data)], dtype=np.int64), np.sort(np.diff(indptr)),
                 np.round(np.sort(diag) / scale, 9) + 0.0, np.round(np.sort(data) / scale, 9) + 0.0):
        perm.update(np.ascontiguousarray(part).tobytes())
    return {"n": n, "nnz": len(data), "exact": exact.hexdigest()[:32], "perm": perm.hexdigest()[:32]}


def mat_fingerprint(mat) -> dict[str, Any]:  # noqa: ANN001
    """:func:`fingerprint` of a sequential PETSc matrix."""
    from .petsc_csr import mat_to_csr

    return fingerprint(mat_to_csr(mat))


# ------------------------------------------------------------------ problems
@dataclass
class Built:
    """An assembled suite problem, ready for any preconditioner."""

    op: Any  # the KSP operator (PETSc Mat)
    pmat: Any = None  # the matrix preconditioners are built from (default: op)
    own_rhs: Any = None  # the problem's own right-hand side (PETSc Vec), if it has one
    nullspace: Any = None  # MatNullSpace of op (pure Neumann, Stokes pressure)
    near_nullspace: Any = None  # MatNullSpace for GAMG (elasticity)
    split: tuple | None = None  # (IS velocity, IS pressure): Stokes in PCFIELDSPLIT
    pc_matrix: Any = None  # the matrix our PC sees (fingerprinted): op, or the velocity block
    c_program: tuple[str, list[str]] | None = None  # (tutorial, its arguments), for the C runs

    def __post_init__(self) -> None:
        if self.pmat is None:
            self.pmat = self.op
        if self.pc_matrix is None:
            self.pc_matrix = self.pmat


@dataclass
class Case:
    """One suite problem: name, kind, what it is, and how to build it at full or quick size."""

    name: str
    kind: str  # firedrake | fieldsplit | dmda | c-tutorial
    description: str
    build: Callable[[bool], Built]
    quick: bool = False  # part of the quick suite
    tags: list[str] = field(default_factory=list)


DISTRIBUTION = {"partitioner_type": "simple"}


def _fd_system(a, L, bcs, V, near_nullspace=None, nullspace=False, aP=None) -> Built:  # noqa: ANN001
    """Assemble a Firedrake problem: the operator with its Dirichlet rows (identity rows and columns),
    its own right-hand side (zero on Dirichlet rows; made consistent with a constant nullspace)."""
    import firedrake as fd
    from petsc4py import PETSc

    P = fd.assemble(a, bcs=bcs, mat_type="aij").petscmat
    bf = fd.assemble(L)
    for bc in bcs:
        bf.dat.data[bc.nodes] = 0.0
    b = P.createVecLeft()
    with bf.dat.vec_ro as v:
        v.copy(b)
    ns = None
    if nullspace:
        ns = PETSc.NullSpace().create(constant=True, comm=P.getComm())
        P.setNullSpace(ns)
        ns.remove(b)
    nns = near_nullspace.nullspace(comm=P.getComm()) if near_nullspace is not None else None
    pm = fd.assemble(aP, bcs=bcs, mat_type="aij").petscmat if aP is not None else None
    return Built(op=P, pmat=pm, own_rhs=b, nullspace=ns, near_nullspace=nns)


def _delaunay_mesh(m: int, seed: int, jitter: float = 0.45):  # noqa: ANN202
    """An unstructured triangulation of the unit square: the Delaunay triangulation (scipy) of an
    (m+1)² grid of points, interior ones moved at random by up to ``jitter`` cells (boundary ones
    along the boundary), so that vertex degrees and shapes vary from cell to cell."""
    import firedrake as fd
    from petsc4py import PETSc
    from scipy.spatial import Delaunay

    rng = np.random.default_rng(seed)
    h = 1.0 / m
    xs = np.linspace(0.0, 1.0, m + 1)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    pts = np.column_stack([X.ravel(), Y.ravel()])
    shift = rng.uniform(-jitter * h, jitter * h, size=pts.shape)
    on_x = (pts[:, 0] == 0) | (pts[:, 0] == 1)
    on_y = (pts[:, 1] == 0) | (pts[:, 1] == 1)
    shift[on_x, 0] = 0.0
    shift[on_y, 1] = 0.0
    pts = pts + shift
    cells = Delaunay(pts).simplices.astype(PETSc.IntType)
    plex = PETSc.DMPlex().createFromCellList(2, cells, pts, comm=PETSc.COMM_SELF)
    return fd.Mesh(plex, comm=fd.COMM_SELF, distribution_parameters=DISTRIBUTION)


def _rotated_tensor(eps: float, theta: float):  # noqa: ANN202
    import firedrake as fd

    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, -s], [s, c]])
    return fd.Constant(R @ np.diag([1.0, eps]) @ R.T)


def _poisson_forms(V, K, f, reaction=None):  # noqa: ANN001, ANN202
    import firedrake as fd

    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    flux = fd.dot(K, fd.grad(u)) if len(fd.as_ufl(K).ufl_shape) == 2 else K * fd.grad(u)
    a = fd.inner(flux, fd.grad(v)) * fd.dx
    if reaction is not None:
        a = a + reaction * u * v * fd.dx
    return a, f * v * fd.dx


def p3_smooth_square(quick: bool) -> Built:
    """The issue's worst case: P3, smooth κ, unit square."""
    import firedrake as fd

    mesh = fd.UnitSquareMesh(*(2 * [6 if quick else 48]), comm=fd.COMM_SELF)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "CG", 3)
    kappa = 1 + 0.5 * fd.sin(2 * fd.pi * x) * fd.sin(3 * fd.pi * y)
    a, L = _poisson_forms(V, kappa, 1 + x)
    return _fd_system(a, L, [fd.DirichletBC(V, 0.0, "on_boundary")], V)


def p1_3d_layers(quick: bool) -> Built:
    """3D P1 on tetrahedra (a scalar 3D problem: the Poisson generator is 2D only), layered κ."""
    import firedrake as fd

    n = 7 if quick else 28
    mesh = fd.UnitCubeMesh(n, n, n, comm=fd.COMM_SELF)
    x, _y, z = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "CG", 1)
    kappa = fd.exp(2.0 * fd.sin(6 * fd.pi * z + 2 * x))
    a, L = _poisson_forms(V, kappa, fd.Constant(1.0))
    return _fd_system(a, L, [fd.DirichletBC(V, 0.0, "on_boundary")], V)


def q1_aniso(quick: bool) -> Built:
    """Q1 on quadrilaterals, rotated anisotropic diffusion, ε = 1e-3 at 30°."""
    import firedrake as fd

    n = 14 if quick else 140
    mesh = fd.UnitSquareMesh(n, n, quadrilateral=True, comm=fd.COMM_SELF)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "Q", 1)
    a, L = _poisson_forms(V, _rotated_tensor(1e-3, math.pi / 6), fd.sin(fd.pi * x) + y)
    return _fd_system(a, L, [fd.DirichletBC(V, 0.0, "on_boundary")], V)


def p1_aniso_delaunay(quick: bool) -> Built:
    """P1 on an unstructured Delaunay mesh, rotated anisotropic diffusion, ε = 1e-2 at 45°."""
    import firedrake as fd

    mesh = _delaunay_mesh(14 if quick else 140, seed=11)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "CG", 1)
    a, L = _poisson_forms(V, _rotated_tensor(1e-2, math.pi / 4), fd.exp(x - y))
    return _fd_system(a, L, [fd.DirichletBC(V, 0.0, "on_boundary")], V)


def q2_jumps(quick: bool) -> Built:
    """Q2 on quadrilaterals, a 4 x 4 checkerboard κ ∈ {1, 1e6} (jumps of 1e6)."""
    import firedrake as fd

    n = 6 if quick else 64
    mesh = fd.UnitSquareMesh(n, n, quadrilateral=True, comm=fd.COMM_SELF)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "Q", 2)
    kappa = fd.conditional(fd.sin(4 * fd.pi * x) * fd.sin(4 * fd.pi * y) > 0, 1e6, 1.0)
    a, L = _poisson_forms(V, kappa, fd.Constant(1.0))
    return _fd_system(a, L, [fd.DirichletBC(V, 0.0, "on_boundary")], V)


def p2_reaction_disc(quick: bool) -> Built:
    """Reaction-diffusion, mass-dominated: -1e-4 Δu + u = f, P2 on the refined unit disc, natural BC."""
    import firedrake as fd

    mesh = fd.UnitDiskMesh(refinement_level=2 if quick else 5, comm=fd.COMM_SELF)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "CG", 2)
    a, L = _poisson_forms(V, fd.Constant(1e-4), fd.cos(3 * x) * y + 1, reaction=fd.Constant(1.0))
    return _fd_system(a, L, [], V)


def p1_neumann_delaunay(quick: bool) -> Built:
    """Pure Neumann, P1 on a Delaunay mesh, smooth heterogeneous κ; constant MatNullSpace attached."""
    import firedrake as fd

    mesh = _delaunay_mesh(14 if quick else 150, seed=23)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "CG", 1)
    kappa = fd.exp(1.5 * fd.sin(3 * x) * fd.cos(5 * y))
    a, L = _poisson_forms(V, kappa, fd.cos(fd.pi * x) * fd.cos(fd.pi * y) + x)
    return _fd_system(a, L, [], V, nullspace=True)


def p2_mixed_bc(quick: bool) -> Built:
    """Mixed BCs: Dirichlet on x = 0 and y = 1, Neumann elsewhere; P2 on a "crossed" triangulation."""
    import firedrake as fd

    n = 5 if quick else 40
    mesh = fd.UnitSquareMesh(n, n, diagonal="crossed", comm=fd.COMM_SELF)
    x, _y = fd.SpatialCoordinate(mesh)
    V = fd.FunctionSpace(mesh, "CG", 2)
    a, L = _poisson_forms(V, 1 + 10 * x * x, fd.Constant(1.0))
    return _fd_system(a, L, [fd.DirichletBC(V, 0.0, (1, 4))], V)


def _elasticity(mesh, family: str, degree: int, E, nu: float, clamp, g) -> Built:  # noqa: ANN001
    import firedrake as fd

    from .problems import rigid_body_modes

    dim = mesh.geometric_dimension
    V = fd.VectorFunctionSpace(mesh, family, degree)
    nu_c = fd.Constant(nu)
    mu = E / (2 * (1 + nu_c))
    lam = E * nu_c / ((1 + nu_c) * (1 - 2 * nu_c))
    u, v = fd.TrialFunction(V), fd.TestFunction(V)

    def eps(w):  # noqa: ANN001, ANN202
        return fd.sym(fd.grad(w))

    a = fd.inner(2 * mu * eps(u) + lam * fd.tr(eps(u)) * fd.Identity(dim), eps(v)) * fd.dx
    L = fd.inner(fd.Constant(g), v) * fd.dx
    bcs = [fd.DirichletBC(V, fd.Constant([0.0] * dim), clamp)]
    return _fd_system(a, L, bcs, V, near_nullspace=rigid_body_modes(V))


def elasticity_2d_p2(quick: bool) -> Built:
    """2D P2 elasticity, ν = 0.49, on a 2 x 1 rectangle clamped at x = 0."""
    import firedrake as fd

    nx = 6 if quick else 56
    mesh = fd.RectangleMesh(nx, nx // 2, 2.0, 1.0, comm=fd.COMM_SELF)
    return _elasticity(mesh, "CG", 2, fd.Constant(1.0), 0.49, 1, [0.0, -1.0])


def elasticity_3d_p1(quick: bool) -> Built:
    """3D P1 elasticity, ν = 0.49, a 3 x 1 x 1 beam of tetrahedra clamped at x = 0."""
    import firedrake as fd

    n = 2 if quick else 12
    mesh = fd.BoxMesh(3 * n, n, n, 3.0, 1.0, 1.0, comm=fd.COMM_SELF)
    return _elasticity(mesh, "CG", 1, fd.Constant(1.0), 0.49, 1, [0.0, 0.0, -1.0])


def elasticity_2d_q1(quick: bool) -> Built:
    """2D Q1 elasticity, ν = 0.49, two materials (E = 1 and 100), clamped at x = 0."""
    import firedrake as fd

    n = 10 if quick else 100
    mesh = fd.UnitSquareMesh(n, n, quadrilateral=True, comm=fd.COMM_SELF)
    _x, y = fd.SpatialCoordinate(mesh)
    E = fd.conditional(y > 0.5, 100.0, 1.0)
    return _elasticity(mesh, "Q", 1, E, 0.49, 1, [1.0, -1.0])


def stokes_velocity_block(quick: bool) -> Built:
    """Taylor-Hood P2-P1 Stokes in a closed cavity with a body force (pressure nullspace attached);
    PCFIELDSPLIT Schur (diag) with the pressure mass matrix for the Schur block."""
    import firedrake as fd
    from petsc4py import PETSc

    n = 6 if quick else 48
    mesh = fd.UnitSquareMesh(n, n, comm=fd.COMM_SELF)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.VectorFunctionSpace(mesh, "CG", 2)
    Q = fd.FunctionSpace(mesh, "CG", 1)
    W = V * Q
    u, p = fd.TrialFunctions(W)
    v, q = fd.TestFunctions(W)
    a = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - p * fd.div(v) * fd.dx - q * fd.div(u) * fd.dx
    aP = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx + p * q * fd.dx
    f = fd.as_vector([fd.sin(fd.pi * y) * (1 + x), fd.cos(2 * fd.pi * x)])
    L = fd.inner(f, v) * fd.dx
    bcs = [fd.DirichletBC(W.sub(0), fd.Constant((0.0, 0.0)), "on_boundary")]
    A = fd.assemble(a, bcs=bcs, mat_type="aij").petscmat
    Pm = fd.assemble(aP, bcs=bcs, mat_type="aij").petscmat
    bf = fd.assemble(L)
    bf.dat[0].data[bcs[0].nodes] = 0.0
    b = A.createVecLeft()
    with bf.dat.vec_ro as vv:
        vv.copy(b)
    is0, is1 = W.dof_dset.field_ises
    is0 = is0.duplicate()
    is0.setBlockSize(V.block_size)
    null = A.createVecLeft()
    null.set(0.0)
    null.isset(is1, 1.0)
    null.normalize()
    ns = PETSc.NullSpace().create(vectors=[null], comm=A.getComm())
    A.setNullSpace(ns)
    ns.remove(b)
    block = Pm.createSubMatrix(is0, is0)
    return Built(op=A, pmat=Pm, own_rhs=b, nullspace=ns, split=(is0, is1), pc_matrix=block)


# ----- finite differences on a DMDA (petsc4py only, natural order)
def _dmda_matrix(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, vals: np.ndarray):  # noqa: ANN202
    """A DMDA's matrix (natural order: x fastest) with the given COO entries (summed)."""
    import scipy.sparse as sp
    from petsc4py import PETSc

    da = PETSc.DMDA().create(dim=len(shape), sizes=shape, dof=1, stencil_width=1,
                             stencil_type=PETSc.DMDA.StencilType.BOX, comm=PETSc.COMM_SELF)
    n = int(np.prod(shape))
    S = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    S.sum_duplicates()
    S.sort_indices()
    A = da.createMat()
    A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
    A.setValuesCSR(S.indptr.astype(PETSc.IntType), S.indices.astype(PETSc.IntType), S.data)
    A.assemble()
    return A, da


def fd5_jumps(quick: bool) -> Built:
    """5-point stencil, Dirichlet, cell coefficients κ ∈ {1, 1e6} in random 10 x 10 blocks (harmonic
    means at the faces): jumps of 1e6."""
    m = 16 if quick else 150
    rng = np.random.default_rng(41)
    blocks = np.where(rng.random((m // 10 + 1, m // 10 + 1)) < 0.35, 1e6, 1.0)
    kap = np.kron(blocks, np.ones((10, 10)))[: m + 1, : m + 1]
    rows, cols, vals = coupled_entries((m, m), face_weights(kap))  # harmonic means of the cells at each face
    A, _ = _dmda_matrix((m, m), rows, cols, vals)
    return Built(op=A)


def fd7_3d_lognormal(quick: bool) -> Built:
    """7-point stencil in 3D, Dirichlet, smooth log-normal-like κ (8 random cosines, σ = 1)."""
    m = 8 if quick else 30
    rng = np.random.default_rng(7)
    g = (np.arange(m + 1) + 0.5) / (m + 1)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    w = rng.normal(0, 8.0, size=(8, 3))
    ph = rng.uniform(0, 2 * np.pi, 8)
    field_ = sum(math.sqrt(2 / 8) * np.cos(w[k, 0] * X + w[k, 1] * Y + w[k, 2] * Z + ph[k]) for k in range(8))
    kap = np.exp(1.0 * field_)
    rows, cols, vals = coupled_entries((m, m, m), face_weights(kap))
    A, _ = _dmda_matrix((m, m, m), rows, cols, vals)
    return Built(op=A)


def fd9_aniso(quick: bool) -> Built:
    """9-point stencil of rotated anisotropic diffusion (ε = 1e-2 at 30°; central differences, the mixed
    derivative on the corners), Dirichlet: symmetric positive definite because a12² < a11 a22."""
    m = 16 if quick else 150
    eps, th = 1e-2, math.pi / 6
    c, s = math.cos(th), math.sin(th)
    a11, a22, a12 = c * c + eps * s * s, s * s + eps * c * c, (1 - eps) * c * s
    # a11 u_xx + 2 a12 u_xy + a22 u_yy with central differences (h² scaled out):
    # neighbours -a11 (x), -a22 (y), corners ∓a12/2; diagonal 2 a11 + 2 a22
    idx = np.arange(m * m).reshape(m, m).T  # [i, j] -> i + m j
    rows, cols, vals = [idx.ravel()], [idx.ravel()], [np.full(m * m, 2 * a11 + 2 * a22)]
    for (di, dj), w in (((1, 0), -a11), ((-1, 0), -a11), ((0, 1), -a22), ((0, -1), -a22),
                        ((1, 1), -a12 / 2), ((-1, -1), -a12 / 2), ((1, -1), a12 / 2), ((-1, 1), a12 / 2)):
        src = (slice(max(0, -di), m - max(0, di)), slice(max(0, -dj), m - max(0, dj)))
        dst = (slice(max(0, di), m - max(0, -di)), slice(max(0, dj), m - max(0, -dj)))
        rows.append(idx[src].ravel())
        cols.append(idx[dst].ravel())
        vals.append(np.full(idx[src].size, w))
    A, _ = _dmda_matrix((m, m), np.concatenate(rows), np.concatenate(cols), np.concatenate(vals))
    return Built(op=A)


def fd27_3d(quick: bool) -> Built:
    """27-point stencil in 3D (DMDA, natural order, box stencil), Dirichlet: every point coupled to its
    26 neighbours with weights 1 (faces), 1/2 (edges), 1/4 (corners) scaled by a smooth coefficient
    κ = 1 + x + y² + z³ at the edge's start."""
    m = 8 if quick else 30
    g = (np.arange(m) + 1.0) / (m + 1)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    kap = 1.0 + X + Y**2 + Z**3
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)]  # one of each ± pair
    weights = [(o, kap / 2.0 ** (sum(map(abs, o)) - 1)) for o in offsets]
    rows, cols, vals = coupled_entries((m, m, m), weights)
    A, _ = _dmda_matrix((m, m, m), rows, cols, vals)
    return Built(op=A)


# ----- PETSc's C tutorials
C_TUTORIALS = {
    # name: (tutorial, args full, args quick, block size, rigid-body modes?, constant nullspace?)
    "c-ex56-elasticity-3d-q1": ("ex56", ["-ne", "17"], ["-ne", "5"], 3, True, False),
    "c-ex55-elasticity-2d-q1": ("ex55", ["-ne", "99"], ["-ne", "9"], 2, True, False),
    "c-ex54-laplacian-q1-soft-inclusion": ("ex54", ["-ne", "149"], ["-ne", "14"], 1, False, False),
    "c-ex50-neumann-2d": ("ex50", ["-da_grid_x", "150", "-da_grid_y", "150"], ["-da_grid_x", "16", "-da_grid_y",
                                                                                  "16"], 1, False, True),
    "c-ex34-neumann-3d": ("ex34", ["-da_grid_x", "28", "-da_grid_y", "28", "-da_grid_z", "28"],
                          ["-da_grid_x", "8", "-da_grid_y", "8", "-da_grid_z", "8"], 1, False, True),
}
_C_BUILD: dict[str, Path] = {}


def petsc_dir() -> Path:
    """PETSC_DIR (the environment's, else petsc4py's configuration)."""
    if os.environ.get("PETSC_DIR"):
        return Path(os.environ["PETSC_DIR"])
    import petsc4py

    return Path(petsc4py.get_config()["PETSC_DIR"])


def build_c_tutorial(name: str) -> Path:
    """Compile PETSc's ``src/ksp/ksp/tutorials/<name>.c`` against this PETSc (once per process)."""
    if name in _C_BUILD:
        return _C_BUILD[name]
    work = Path(tempfile.mkdtemp(prefix=f"pcgcvae-foreign-{name}-"))
    atexit.register(shutil.rmtree, work, True)
    src = petsc_dir() / "src/ksp/ksp/tutorials" / f"{name}.c"
    if not src.is_file():
        raise FileNotFoundError(f"PETSc's tutorial {src} is missing (the suite needs PETSc's source tree)")
    shutil.copy(src, work / src.name)
    (work / "makefile").write_text(f"{name}: {name}.o\ninclude ${{PETSC_DIR}}/lib/petsc/conf/variables\n"
                                   "include ${PETSC_DIR}/lib/petsc/conf/rules\n")
    env = dict(os.environ, PETSC_DIR=str(petsc_dir()))
    if "PETSC_ARCH" not in env:
        import petsc4py

        env["PETSC_ARCH"] = petsc4py.get_config()["PETSC_ARCH"]
    out = subprocess.run(["make", "-s", name], cwd=work, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"building {name} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    _C_BUILD[name] = work / name
    return work / name


CG_OPTIONS = {"ksp_type": "cg", "ksp_rtol": RTOL, "ksp_atol": 0.0, "ksp_max_it": MAX_IT,
              "ksp_norm_type": "unpreconditioned"}


def _c_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))


def run_c_tutorial(exe: Path, args: list[str], options: dict[str, Any], extra: list[str] = ()) -> str:
    """Run a built tutorial with CG and ``options`` (our PCs through ``-python``); its stdout+stderr."""
    flat = []
    for k, v in {**CG_OPTIONS, **options}.items():
        flat += [f"-{k}", str(v)]
    cmd = [str(exe), *args, *flat, "-ksp_converged_reason", "-options_left", "no", *extra]
    if options.get("pc_type") == "python":
        cmd += ["-python", sys.executable]
    out = subprocess.run(cmd, cwd=exe.parent, env=_c_env(), capture_output=True, text=True, timeout=1800)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{exe.name} failed (exit {out.returncode}): {text[-3000:]}")
    return text


def c_iterations(text: str) -> tuple[int, bool]:
    """Iterations and convergence of the first solve reported by ``-ksp_converged_reason``."""
    m = re.search(r"Linear solve (converged|did not converge) due to (\w+) iterations (\d+)", text)
    if not m:
        raise RuntimeError(f"no -ksp_converged_reason line in the output: {text[-2000:]}")
    return int(m.group(3)), m.group(1) == "converged"


def _c_problem(name: str) -> Callable[[bool], Built]:
    prog, full, quick_args, bs, rigid, constant = C_TUTORIALS[name]

    def build(quick: bool) -> Built:
        from petsc4py import PETSc

        args = quick_args if quick else full
        exe = build_c_tutorial(prog)
        stem = exe.parent / f"{name}-{'quick' if quick else 'full'}"
        run_c_tutorial(exe, args, {"pc_type": "jacobi"},
                       ["-ksp_view_mat", f"binary:{stem}.A", "-ksp_view_rhs", f"binary:{stem}.b"])
        viewer = PETSc.Viewer().createBinary(f"{stem}.A", "r", comm=PETSc.COMM_SELF)
        A = PETSc.Mat().create(comm=PETSc.COMM_SELF)
        A.setType(PETSc.Mat.Type.AIJ)
        A.setBlockSize(bs)
        A.load(viewer)
        viewer.destroy()
        viewer = PETSc.Viewer().createBinary(f"{stem}.b", "r", comm=PETSc.COMM_SELF)
        b = PETSc.Vec().load(viewer)
        viewer.destroy()
        ns = nns = None
        if constant:
            ns = PETSc.NullSpace().create(constant=True, comm=PETSc.COMM_SELF)
            A.setNullSpace(ns)
        if rigid:  # the tutorials' node numbering: x fastest, then y (then z), bs dofs per node
            nn = int(args[1]) + 1
            g = np.arange(nn) / (nn - 1)
            grids = np.meshgrid(*([g] * bs), indexing="ij")
            coords = np.column_stack([c.transpose().ravel() for c in grids])  # x fastest
            cv = PETSc.Vec().createWithArray(coords.ravel().copy(), bsize=bs, comm=PETSc.COMM_SELF)
            nns = PETSc.NullSpace().createRigidBody(cv)
        return Built(op=A, own_rhs=b, nullspace=ns, near_nullspace=nns, c_program=(prog, list(args)))

    return build


def all_cases() -> list[Case]:
    """The suite (``quick``: in the quick suite too)."""
    cases = [
        Case("p3-smooth-square", "firedrake", "Poisson P3, unit square, smooth κ, Dirichlet", p3_smooth_square, True),
        Case("p1-3d-tets-layers", "firedrake", "Poisson P1, 3D tetrahedra, layered κ (contrast e^4), Dirichlet",
             p1_3d_layers),
        Case("q1-aniso-1e-3", "firedrake", "Q1 quadrilaterals, rotated anisotropic diffusion ε=1e-3 at 30°",
             q1_aniso, True),
        Case("p1-aniso-1e-2-delaunay", "firedrake",
             "P1, unstructured Delaunay mesh, rotated anisotropic diffusion ε=1e-2 at 45°", p1_aniso_delaunay),
        Case("q2-jumps-1e6", "firedrake", "Q2 quadrilaterals, checkerboard κ ∈ {1, 1e6}", q2_jumps),
        Case("p2-reaction-disc", "firedrake", "reaction-diffusion -1e-4Δu+u, P2, refined disc, natural BC",
             p2_reaction_disc, True),
        Case("p1-neumann-delaunay", "firedrake",
             "pure Neumann, P1, Delaunay mesh, smooth κ, MatNullSpace + consistent rhs", p1_neumann_delaunay, True),
        Case("p2-mixed-bc-crossed", "firedrake", "mixed Dirichlet/Neumann, P2, crossed triangulation, κ=1+10x²",
             p2_mixed_bc),
        Case("elasticity-2d-p2-nu049", "firedrake", "elasticity 2D P2, ν=0.49, 2x1 rectangle, clamped",
             elasticity_2d_p2, True),
        Case("elasticity-3d-p1-nu049", "firedrake", "elasticity 3D P1 tetrahedra, ν=0.49, 3x1x1 beam, clamped",
             elasticity_3d_p1),
        Case("elasticity-2d-q1-nu049", "firedrake", "elasticity 2D Q1, ν=0.49, E ∈ {1, 100} (two layers), clamped",
             elasticity_2d_q1),
        Case("stokes-th-velocity-block", "fieldsplit",
             "Stokes Taylor-Hood P2-P1 cavity; MINRES + PCFIELDSPLIT Schur (diag, pressure mass); row PC on the "
             "velocity block", stokes_velocity_block, True),
        Case("fd5-jumps-1e6", "dmda", "5-point FD (DMDA, natural order), κ ∈ {1, 1e6} in random blocks", fd5_jumps,
             True),
        Case("fd7-3d-lognormal", "dmda", "7-point FD in 3D (DMDA, natural order), smooth log-normal κ",
             fd7_3d_lognormal),
        Case("fd9-aniso-1e-2", "dmda", "9-point FD (DMDA, natural order), rotated anisotropy ε=1e-2 at 30°",
             fd9_aniso, True),
        Case("fd27-3d", "dmda", "27-point stencil in 3D (DMDA box, natural order), smooth κ = 1+x+y²+z³",
             fd27_3d),
    ]
    descriptions = {
        "c-ex56-elasticity-3d-q1": "PETSc ex56: 3D Q1 hexahedral elasticity, soft inclusion (bs 3)",
        "c-ex55-elasticity-2d-q1": "PETSc ex55: 2D Q1 plane-strain elasticity, soft inclusion (bs 2)",
        "c-ex54-laplacian-q1-soft-inclusion": "PETSc ex54: 2D Q1 Laplacian, coefficient 1e-3 in a disc",
        "c-ex50-neumann-2d": "PETSc ex50: 2D 5-point Neumann Laplacian (DMDA), MatNullSpace",
        "c-ex34-neumann-3d": "PETSc ex34: 3D 7-point Neumann Laplacian (DMDA), MatNullSpace",
    }
    quick_c = {"c-ex56-elasticity-3d-q1", "c-ex50-neumann-2d"}
    cases += [Case(name, "c-tutorial", descriptions[name], _c_problem(name), name in quick_c) for name in C_TUTORIALS]
    return cases


# ------------------------------------------------------------------ running
def _random_rhs(built: Built, name: str):  # noqa: ANN202
    b = built.op.createVecLeft()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    b.array[:] = rng.standard_normal(b.getSize())
    if built.nullspace is not None:
        built.nullspace.remove(b)
    return b


def _ksp_options(built: Built, pc_options: dict[str, Any]) -> dict[str, Any]:
    if built.split is None:
        return {**CG_OPTIONS, **pc_options}
    # Stokes: MINRES on the saddle point, block-diagonal preconditioner diag(row PC on the velocity block,
    # Jacobi on the pressure mass matrix)
    opts = {"ksp_type": "minres", "ksp_rtol": RTOL, "ksp_atol": 0.0, "ksp_max_it": MAX_IT,
            "pc_fieldsplit_type": "schur", "pc_fieldsplit_schur_fact_type": "diag",
            "pc_fieldsplit_schur_precondition": "a11", "pc_fieldsplit_schur_scale": 1.0,
            "fieldsplit_0_ksp_type": "preonly", "fieldsplit_1_ksp_type": "preonly",
            "fieldsplit_1_pc_type": "jacobi"}
    opts.update({f"fieldsplit_0_{k}": v for k, v in pc_options.items()})
    return opts


_counter = iter(range(10**9))


def signal_text(r: dict) -> str:
    """Which of the guard's signals decided a table row, with the short CG runs' start ("short CG from
    near-nullspace")."""
    signal = r.get("guard_signal")
    if signal == "short CG" and r.get("guard_start"):
        return f"short CG from {r['guard_start']}"
    return _cell(signal)


def guard_columns(guard: dict) -> dict[str, Any]:
    """The guard's signals and decision (``stats['guard']`` of GCVAEPC) as table columns."""
    est, thr = guard.get("estimate"), guard.get("threshold")
    model_trial = guard.get("trials", {}).get(1.0)
    return {"guard_estimate": None if est is None else round(float(est), 6),
            "guard_threshold": None if thr is None else float(thr),
            "guard_fired": bool(guard.get("fired")), "guard_rows": guard.get("rows"),
            "guard_signal": guard.get("signal"), "guard_start": guard.get("start"), "guard_alpha": guard.get("alpha"),
            "guard_predicted": None if model_trial is None else round(float(model_trial["ratio"]), 4),
            "guard_cost_s": None if guard.get("cost") is None else round(float(guard["cost"]), 4),
            # every candidate's short-CG trial, keyed by alpha (JSON only)
            "guard_trials": {f"{a:g}": t for a, t in guard.get("trials", {}).items()}}


def run_pc(built: Built, name: str, pc: str, b_random, pc_options: dict[str, Any] | None = None,  # noqa: ANN001
           ) -> dict[str, Any]:
    """Set up ``pc`` (or ``pc_options`` under that name) on the problem and solve the random and the own
    right-hand side (one KSP)."""
    from petsc4py import PETSc

    prefix = f"foreign{next(_counter)}_"
    opts = PETSc.Options()
    full = _ksp_options(built, PC_OPTIONS[pc] if pc_options is None else pc_options)
    for k, v in full.items():
        opts[prefix + k] = v
    row: dict[str, Any] = {"pc": pc}
    ksp = PETSc.KSP().create(comm=built.op.getComm())
    try:
        ksp.setOptionsPrefix(prefix)
        ksp.setOperators(built.op, built.pmat)
        if built.near_nullspace is not None:
            built.pmat.setNearNullSpace(built.near_nullspace)
        if built.split is not None:
            ksp.getPC().setType("fieldsplit")
            ksp.getPC().setFieldSplitIS(("0", built.split[0]), ("1", built.split[1]))
        ksp.setFromOptions()
        x = built.op.createVecRight()
        t0 = time.perf_counter()
        ksp.setUp()
        ksp.setUpOnBlocks()
        t1 = time.perf_counter()
        ksp.solve(b_random, x)
        t2 = time.perf_counter()
        row.update(iterations=ksp.getIterationNumber(), converged=ksp.getConvergedReason() > 0,
                   setup_s=round(t1 - t0, 4), solve_s=round(t2 - t1, 4), total_s=round(t2 - t0, 4))
        if built.own_rhs is not None:
            x.set(0.0)
            ksp.solve(built.own_rhs, x)
            row.update(iterations_own=ksp.getIterationNumber(), converged_own=ksp.getConvergedReason() > 0)
        our = ksp.getPC()
        if built.split is not None:
            our = our.getFieldSplitSubKSP()[0].getPC()
        stats = dict(getattr(our.getPythonContext(), "stats", {})) if our.getType() == "python" else {}
        if "kaporin" in stats:
            row["kaporin"] = round(float(stats["kaporin"]), 6)
        guard = stats.get("guard")
        if isinstance(guard, dict):
            row.update(guard_columns(guard))
    except Exception as exc:  # a failure is a result of the suite, not the end of it
        row.update(iterations=0, converged=False, error=f"{type(exc).__name__}: {exc}"[:500].replace("\n", " "))
    finally:
        ksp.destroy()
        for k in full:
            opts.delValue(prefix + k)
    return row


def load_models() -> float:
    """Load the shipped default models (exported weights, no torch) once before timing; seconds."""
    t0 = time.perf_counter()
    from .inference import load_inference_model
    from .models_registry import default_model_name

    for bs in (1, 2):
        load_inference_model(default_model_name(bs))
    return time.perf_counter() - t0


def candidate_models(paths: list[str]) -> dict[int, str]:
    """``--models``: the model each block size gets instead of the shipped default (the first of
    ``paths`` trained for it), read from the models' headers."""
    from .inference import load_inference_model

    chosen: dict[int, str] = {}
    for path in paths:
        _, info = load_inference_model(path)
        for bs in info["meta"]["block_sizes"]:
            chosen.setdefault(int(bs), str(path))
    return chosen


def pc_options_for(pc: str, block_size: int, models: dict[int, str] | None = None) -> dict[str, Any]:
    """``pc``'s options on an operator of ``block_size``: with ``models`` (:func:`candidate_models`),
    a GCVAE row reads the candidate model for that block size where there is one."""
    opts = dict(PC_OPTIONS[pc])
    if models and pc.startswith("gcvae") and block_size in models:
        opts["pc_gcvae_model"] = models[block_size]
    return opts


def run_case(case: Case, quick: bool, pcs: list[str], c_runs: bool = True, log=print,  # noqa: ANN001
             models: dict[int, str] | None = None) -> tuple[dict, list[dict]]:
    """Build one problem and run every preconditioner (GCVAE rows with the candidate ``models`` of
    :func:`candidate_models` where given); (problem record, rows)."""
    t0 = time.perf_counter()
    built = case.build(quick)
    build_s = time.perf_counter() - t0
    fp = mat_fingerprint(built.pc_matrix)
    info = {"problem": case.name, "kind": case.kind, "description": case.description, "dofs": built.op.getSize()[0],
            "nnz": fp["nnz"], "block_size": built.pc_matrix.getBlockSize(), "fingerprint": fp,
            "own_rhs": built.own_rhs is not None, "build_s": round(build_s, 2)}
    if built.split is not None:
        info["velocity_dofs"] = fp["n"]
    b = _random_rhs(built, case.name)
    rows = []
    for pc in pcs:
        pc_options = pc_options_for(pc, info["block_size"], models)
        r = run_pc(built, case.name, pc, b, pc_options)
        if built.c_program is not None and c_runs:
            try:
                exe = build_c_tutorial(built.c_program[0])
                its, ok = c_iterations(run_c_tutorial(exe, built.c_program[1], pc_options))
                r["iterations_c"] = its if ok else f"{its} (not conv.)"
            except Exception as exc:
                r["error"] = (r.get("error", "") + f" C run: {exc}")[:500].replace("\n", " ")
        rows.append({k: info[k] for k in ("problem", "kind", "description", "dofs", "nnz", "block_size")} | r)
        log(f"  {case.name:36s} {pc:15s} its {r.get('iterations')}"
            + (f" / own {r['iterations_own']}" if "iterations_own" in r else "")
            + (f" / C {r['iterations_c']}" if "iterations_c" in r else "")
            + f"  setup {r.get('setup_s', '-')} s  total {r.get('total_s', '-')} s"
            + (f"  ERROR {r['error']}" if r.get("error") else ""))
    for pc, fsai in SAME_PATTERN.items():
        g = next((r for r in rows if r["pc"] == pc), None)
        f = next((r for r in rows if r["pc"] == fsai), None)
        if g and f and "kaporin" in g and "kaporin" in f:
            g["kaporin_gap"] = round(g["kaporin"] - f["kaporin"], 6)
    return info, rows


# ------------------------------------------------------------------ reporting
def _ratio(rows: list[dict], problem: str, num: str, den: str, key: str = "iterations") -> float | None:
    pick = {r["pc"]: r for r in rows if r["problem"] == problem}
    a, b = pick.get(num), pick.get(den)
    if a is None or b is None or a.get(key) in (None, "") or not b.get(key):
        return None
    conv = "converged" if key == "iterations" else "converged_own"
    if not (a.get(conv) and b.get(conv)):
        return None
    return a[key] / b[key]


def summary_lines(rows: list[dict]) -> list[str]:
    """The headline fractions: GCVAE ≤ 1.00× FSAI with the guard, ≤ 0.97× without, per level; guard firings."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    out = []
    for key, what in (("iterations", "random right-hand side"), ("iterations_own", "own right-hand side")):
        probs = [p for p in problems if key == "iterations" or any(r["problem"] == p and r.get(key) not in (None, "")
                                                                   for r in rows)]
        if not probs:
            continue
        for level, (g, ng, f) in ((1, ("gcvae", "gcvae-noguard", "fsai")), (2, ("gcvae2", "gcvae2-noguard", "fsai2"))):
            with_g = [_ratio(rows, p, g, f, key) for p in probs]
            without = [_ratio(rows, p, ng, f, key) for p in probs]
            n_with = sum(1 for v in with_g if v is not None and v <= 1.00 + 1e-12)
            n_without = sum(1 for v in without if v is not None and v <= 0.97 + 1e-12)
            valid = [v for v in with_g if v is not None]
            valid_ng = [v for v in without if v is not None]
            out.append(
                f"- {what}, level {level}: GCVAE ≤ 1.00× FSAI (with the guard) on **{n_with}/{len(probs)}** problems"
                + (f" (ratios {min(valid):.3f}–{max(valid):.3f}, median {np.median(valid):.3f})" if valid else "")
                + f"; without the guard ≤ 0.97× on **{n_without}/{len(probs)}**"
                + (f" (ratios {min(valid_ng):.3f}–{max(valid_ng):.3f}, median {np.median(valid_ng):.3f})"
                   if valid_ng else "")
                + "."
            )
    for pc in ("gcvae", "gcvae2", "gcvae-noguard", "gcvae2-noguard"):
        gr = [r for r in rows if r["pc"] == pc]
        reported = [r for r in gr if r.get("guard_fired") not in (None, "")]
        fired = [r["problem"] for r in reported if r["guard_fired"] in (True, "True")]
        if reported:
            share = [float(r["guard_cost_s"]) / float(r["total_s"]) for r in reported
                     if r.get("guard_cost_s") not in (None, "") and r.get("total_s") and float(r["total_s"]) > 0]
            by_signal = {}
            for r in reported:
                if r["guard_fired"] in (True, "True"):
                    by_signal[r.get("guard_signal")] = by_signal.get(r.get("guard_signal"), 0) + 1
            out.append(f"- guard ({pc}): reported on {len(reported)}/{len(gr)} setups, fired on {len(fired)}"
                       + (f" ({', '.join(fired)})" if fired else "")
                       + (" [" + ", ".join(f"{n} by the {k}" for k, n in by_signal.items()) + "]" if by_signal else "")
                       + (f"; its cost {100 * float(np.median(share)):.1f} % (median; max {100 * max(share):.1f} %)"
                          " of the GCVAE's setup + solve" if share else ""))
        else:
            out.append(f"- guard ({pc}): not reported by the preconditioner on any of {len(gr)} setups "
                       "(no stats['guard'])")
    failed = [f"{r['problem']}/{r['pc']}" for r in rows if not r.get("converged")]
    out.append(f"- not converged or failed (random rhs): {', '.join(failed) if failed else 'none'}")
    return out


def _cell(v: Any, fmt: str = "{}") -> str:
    return "-" if v in (None, "") else fmt.format(v)


def write_outputs(problems: list[dict], rows: list[dict], out: Path, meta: dict) -> None:
    """foreign.csv, foreign.json and foreign.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "foreign.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    (out / "foreign.json").write_text(json.dumps({"meta": meta, "problems": problems, "rows": rows}, indent=1))
    pcs = list(dict.fromkeys(r["pc"] for r in rows))
    lines = [
        "# Foreign-problem suite", "",
        f"{meta['when']} on {meta['machine']}, `{meta['command']}` ({meta['seconds']:.0f} s). "
        f"CG (MINRES for Stokes), rtol {RTOL:g}, unpreconditioned residual norm (MINRES: preconditioned), "
        f"random right-hand side (the timed solve) and the problem's own; every preconditioner with its default "
        f"options and " + (f"the candidate models {meta['models']} (by block size; the shipped models otherwise)"
                           if meta.get("models") else "the shipped models")
        + ". Before timing, the models (exported weights, no torch) were loaded once "
        f"({meta['model_load_s']:.1f} s). The Kaporin gap is GCVAE's minus FSAI's (same pattern level), "
        "`stats['kaporin']`, normalised rows.", "",
        "## Summary", "", *summary_lines(rows), "",
        "## Iterations (random right-hand side) and GCVAE / FSAI ratios", "",
        "| problem | dofs | " + " | ".join(pcs) + " | L1 ratio | L1 ratio no guard | L2 ratio | L2 ratio no guard"
        " | gap L1 | gap L2 |",
        "|---|---|" + "---|" * (len(pcs) + 6),
    ]
    for p in problems:
        pick = {r["pc"]: r for r in rows if r["problem"] == p["problem"]}
        its = [(str(pick[pc]["iterations"]) + ("" if pick[pc].get("converged") else "*")) if pc in pick else "-"
               for pc in pcs]
        ratios = [_ratio(rows, p["problem"], g, f) for g, f in (("gcvae", "fsai"), ("gcvae-noguard", "fsai"),
                                                                ("gcvae2", "fsai2"), ("gcvae2-noguard", "fsai2"))]
        gaps = [pick.get(g, {}).get("kaporin_gap") for g in ("gcvae-noguard", "gcvae2-noguard")]
        lines.append(f"| {p['problem']} | {p['dofs']} | " + " | ".join(its) + " | "
                     + " | ".join(_cell(v, "{:.3f}") for v in ratios) + " | "
                     + " | ".join(_cell(v, "{:+.4f}") for v in gaps) + " |")
    lines += ["", "`*`: not converged (or failed; see the problem's table). Gaps are those of the unguarded GCVAE "
              "(the model's own factor).", "", "## Per problem", ""]
    for p in problems:
        prs = [r for r in rows if r["problem"] == p["problem"]]
        lines += [f"### {p['problem']}", "",
                  f"{p['description']}; n = {p['dofs']}"
                  + (f" (velocity block {p['velocity_dofs']})" if "velocity_dofs" in p else "")
                  + f", nnz of the preconditioned matrix {p['nnz']}, block size {p['block_size']}"
                  + f"; own right-hand side: {'yes' if p['own_rhs'] else 'no'}.", "",
                  "| pc | iterations | own rhs | in the C program | setup (s) | total (s) | Kaporin | gap to FSAI "
                  "| guard estimate | threshold | rows | predicted ratio | decided by | fired | guard cost (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in prs:
            its = str(r.get("iterations")) + ("" if r.get("converged") else " (not conv.)")
            own = _cell(r.get("iterations_own")) + ("" if r.get("converged_own", True) else " (not conv.)")
            lines.append(f"| {r['pc']} | {its} | {own} | {_cell(r.get('iterations_c'))} | "
                         f"{_cell(r.get('setup_s'), '{:.3f}')} | {_cell(r.get('total_s'), '{:.3f}')} | "
                         f"{_cell(r.get('kaporin'), '{:.5f}')} | {_cell(r.get('kaporin_gap'), '{:+.5f}')} | "
                         f"{_cell(r.get('guard_estimate'), '{:.5f}')} | {_cell(r.get('guard_threshold'))} | "
                         f"{_cell(r.get('guard_rows'))} | {_cell(r.get('guard_predicted'), '{:.3f}')} | "
                         f"{signal_text(r)} | {_cell(r.get('guard_fired'))} | "
                         f"{_cell(r.get('guard_cost_s'), '{:.3f}')} |")
        ratios = []
        for key, what in (("iterations", "random rhs"), ("iterations_own", "own rhs")):
            vals = [_ratio(prs, p["problem"], g, f, key) for g, f in (("gcvae", "fsai"), ("gcvae-noguard", "fsai"),
                                                                      ("gcvae2", "fsai2"), ("gcvae2-noguard", "fsai2"))]
            if any(v is not None for v in vals):
                ratios.append(f"{what}: GCVAE/FSAI L1 {_cell(vals[0], '{:.3f}')} (no guard {_cell(vals[1], '{:.3f}')})"
                              f", L2 {_cell(vals[2], '{:.3f}')} (no guard {_cell(vals[3], '{:.3f}')})")
        errors = [f"{r['pc']}: {r['error']}" for r in prs if r.get("error")]
        lines += ["", *(f"- {x}" for x in ratios + errors), ""]
    (out / "foreign.md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.bench --suite foreign",
                                 description="The foreign-problem suite (problems no model trains on).")
    ap.add_argument("--suite", default="foreign", choices=["foreign"], help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few problems of each kind")
    ap.add_argument("--problems", nargs="+", default=None, help="only these problems (names as in foreign.md)")
    ap.add_argument("--pcs", nargs="+", default=PCS, choices=PCS + SMOOTHER_PCS,
                    help=f"default: {' '.join(PCS)} (the smoother rows {', '.join(SMOOTHER_PCS)} only when named)")
    ap.add_argument("--no-c-runs", action="store_true",
                    help="skip running the C tutorials once per preconditioner (their matrices are still solved)")
    ap.add_argument("--models", nargs="+", default=None, metavar="PATH",
                    help="judge these models (.npz or .pt) instead of the shipped ones: the GCVAE rows of a "
                         "problem use the first one trained for its block size (the shipped default otherwise)")
    ap.add_argument("--out", type=Path, default=Path("results"))
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import firedrake  # noqa: F401  (first: it initialises PETSc)

    cases = all_cases()
    if args.problems:
        unknown = sorted(set(args.problems) - {c.name for c in cases})
        if unknown:
            raise SystemExit(f"unknown problems {unknown}; known: {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in args.problems]
    elif args.quick:
        cases = [c for c in cases if c.quick]
    t0 = time.perf_counter()
    load_s = load_models() if any(pc.startswith("gcvae") for pc in args.pcs) else 0.0
    models = candidate_models(args.models) if args.models else None
    problems, rows = [], []
    for case in cases:
        print(f"{case.name} ({case.kind}): {case.description}", flush=True)
        info, r = run_case(case, args.quick, args.pcs, c_runs=not args.no_c_runs,
                           log=lambda s: print(s, flush=True), models=models)
        problems.append(info)
        rows += r
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()}-core {os.uname().machine} ({os.uname().nodename})",
            "command": "python -m pcgcvae.bench " + " ".join(["--suite", "foreign", *[a for a in argv if a not in
                                                                                       ("--suite", "foreign")]]),
            "quick": args.quick, "models": {str(k): v for k, v in (models or {}).items()},
            "model_load_s": round(load_s, 2), "seconds": round(time.perf_counter() - t0, 1),
            "rtol": RTOL, "max_it": MAX_IT}
    write_outputs(problems, rows, args.out, meta)
    print("\n".join(summary_lines(rows)))
    print(f"wrote {args.out}/foreign.csv, foreign.json, foreign.md ({len(problems)} problems, {len(rows)} rows, "
          f"{meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
