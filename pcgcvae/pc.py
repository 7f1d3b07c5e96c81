"""PETSc Python-context preconditioners: the learned GCVAE SPAI and the
classical FSAI reference.

Both build, on every MPI rank, a lower-triangular factor G with a strictly
positive diagonal from the rank's (optionally overlapped) block of the
preconditioning matrix, assemble it as a parallel AIJ matrix and apply
M = Gᵀ G with two mat-vecs::

    -ksp_type cg -pc_type python -pc_python_type pcgcvae.GCVAEPC
    -ksp_type cg -pc_type python -pc_python_type pcgcvae.FSAIPC

Options (with the PC's prefix): ``-pc_gcvae_model``, ``-pc_gcvae_samples``,
``-pc_gcvae_latent mean|sample``, ``-pc_gcvae_seed``,
``-pc_gcvae_pattern_level``, ``-pc_gcvae_pattern_threshold``,
``-pc_gcvae_overlap``, ``-pc_gcvae_ordering`` (``-pc_fsai_*`` for the pattern,
overlap and ordering of FSAIPC).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from mpi4py import MPI
from petsc4py import PETSc

from .csr import CSR, check_operator, normalise_rows, scale_symmetric, structure_digest
from .errors import OperatorError, OptionError, PCGCVAEError
from .features import GraphTopology, build_arrays, graph_topology
from .fsai import FSAIPlan, fsai_values, kaporin_of_diagonal, normalised_on_plan
from .guard import (
    DEFAULT_FRACTION,
    DEFAULT_FULL_ITERATIONS,
    DEFAULT_FULL_ROWS,
    DEFAULT_PREDICTOR,
    DEFAULT_RATIO,
    DEFAULT_SMOOTH,
    DEFAULT_START,
    DEFAULT_STEPS,
    DEFAULT_THRESHOLD,
    combine,
    local_sample,
)
from .inference import load_inference_model
from .models_registry import default_model_name
from .ordering import (
    DEFAULT_ORDERING,
    check_ordering,
    inverse,
    local_permutation,
    permuted_structure,
    recorded_ordering,
)
from .pattern import MAX_LEVEL, factor_pattern
from .petsc_csr import csr_to_mat, mat_to_csr, petsc_arrays
from .spectrum import LANCZOS_STEPS, spectral_feature
from .symmetry import check_couplings, check_local
from .trial import (
    FULL_RTOL,
    MODES_IN_WORDS,
    PREDICTORS,
    STARTS,
    TrialResult,
    condition_ratio,
    energy_ratio,
    exact_solution,
    full_cg,
    modes_solution,
    predicted_ratio,
    short_cg,
)

_EVENTS: dict[str, PETSc.Log.Event] = {}
_STAGES = ("local block", "model load", "ordering", "scale", "symmetry check", "pattern", "graph", "spectral input",
           "inference", "selection", "guard", "fsai", "assembly", "total")


def _event(name: str) -> PETSc.Log.Event:
    if name not in _EVENTS:
        _EVENTS[name] = PETSc.Log.Event(name)
    return _EVENTS[name]


def _require_real_scalars() -> None:
    if np.dtype(PETSc.ScalarType).kind == "c":
        raise OperatorError(
            "pcgcvae needs a real-scalar PETSc build; this PETSc was configured with complex scalars"
        )


@dataclass
class _LocalBlock:
    """The rank's block of P: CSR, its global indices and the owned rows."""

    csr: CSR
    global_index: np.ndarray
    owned: np.ndarray


@dataclass
class _LocalProblem:
    """What the factor values are computed from, on one rank: the block in the local
    ordering (its index maps; its matrix is Â's, A's own values are not kept), the scaled
    operator Â = D^-1/2 A D^-1/2, the pattern S and, at level >= 2, Â² on S."""

    block: _LocalBlock
    reordered: bool
    ahat: CSR
    dinv: np.ndarray
    s: CSR
    a2: np.ndarray | None


def matrix_family(mtype: str) -> str:
    """The AIJ type of G for an operator of type ``mtype``: the same storage family
    (``aijsell``, ``aijperm``, ``aijcusparse``, ``aijkokkos``, ...) without its seq/mpi
    prefix, so that G is applied where and how the operator is; plain ``aij`` for
    the blocked and symmetric-block formats (G is triangular, not block-structured)."""
    base = mtype[3:] if mtype.startswith(("seq", "mpi")) else mtype
    return base if base.startswith("aij") else PETSc.Mat.Type.AIJ


def factor_matrix(P: PETSc.Mat, factor: CSR) -> PETSc.Mat:
    """The parallel factor G (collective): ``factor`` holds this rank's owned rows of G with
    global column indices; G has P's sizes and P's AIJ family (:func:`matrix_family`)."""
    G = PETSc.Mat().create(comm=P.getComm())
    G.setSizes(P.getSizes())
    G.setType(matrix_family(P.getType()))
    G.setPreallocationCSR(petsc_arrays(factor))  # inserts the values and assembles
    G.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
    return G


def factor_pair(P: PETSc.Mat, factor: CSR) -> tuple[PETSc.Mat, PETSc.Mat]:
    """G (:func:`factor_matrix`) and its explicit transpose Gᵀ in the same matrix type (collective):
    the apply M x = Gᵀ (G x) then runs two forward products."""
    G = factor_matrix(P, factor)
    GT = PETSc.Mat()  # an empty handle: MAT_INITIAL_MATRIX (no argument = in place)
    G.transpose(GT)
    if GT.getType() != G.getType():
        GT.convert(G.getType())
    return G, GT


class SPAIFactorPC:
    """Shared machinery of the factored SPAI preconditioners (M = Gᵀ G).

    Subclasses provide ``_factor_values`` (the values of Ĝ on the pattern for
    the scaled local operator) and their option names.
    """

    options_stem = "pc_spai_"
    name = "SPAI"

    def __init__(self) -> None:
        self.pattern_level = 1
        self.pattern_threshold = 0.02
        self.overlap = 0
        self.ordering = ""  # "": the subclass's default (see _ordering)
        self.check_symmetry = True
        self.symmetry_tol = 1e-8
        self.G: PETSc.Mat | None = None
        self.GT: PETSc.Mat | None = None
        self._setup_layout: dict | None = None  # this setup's factor layout (see _local_factor)
        self._work: PETSc.Vec | None = None
        self._structure: tuple[tuple, tuple] | None = None  # (sizes and type, digest of G's structure)
        self._kept: tuple | None = None  # the operator and options the installed factor was built for
        self._block_structure: tuple | None = None  # this setup's digest of the local block's structure
        self._pattern_cache: dict = {}  # Â's structure (digest), the pattern, Â's PETSc Mat at level >= 2
        self._same_structure = False  # this setup's Â has the nonzero structure of the previous setup's
        self._overlap_cache: dict = {}
        self._ordering_cache: dict = {}
        self._reused: list[str] = []
        self._setups = 0  # setups run by this PC (what the caches were built in)
        self._parallel = False
        self.stats: dict = {}
        self.times: dict[str, float] = {}
        self._apply_event = _event(self.name + "Apply")

    # -- PETSc PC interface -------------------------------------------------
    def create(self, pc: PETSc.PC) -> None:
        _require_real_scalars()

    def setFromOptions(self, pc: PETSc.PC) -> None:
        _require_real_scalars()
        opts = PETSc.Options(pc.getOptionsPrefix())
        stem = self.options_stem
        self.pattern_level = opts.getInt(stem + "pattern_level", self.pattern_level)
        self.pattern_threshold = opts.getReal(stem + "pattern_threshold", self.pattern_threshold)
        self.overlap = opts.getInt(stem + "overlap", self.overlap)
        self.ordering = opts.getString(stem + "ordering", self.ordering)
        self.check_symmetry = opts.getBool(stem + "check_symmetry", self.check_symmetry)
        self.symmetry_tol = opts.getReal(stem + "symmetry_tol", self.symmetry_tol)
        self._read_options(opts)
        self._validate_options()

    def _read_options(self, opts: PETSc.Options) -> None:
        """Subclass hook: read the subclass's own options."""

    def _validate_options(self) -> None:
        if not 1 <= self.pattern_level <= MAX_LEVEL:
            raise OptionError(f"-{self.options_stem}pattern_level must be in 1..{MAX_LEVEL}, got {self.pattern_level}")
        if not (self.pattern_threshold >= 0 and np.isfinite(self.pattern_threshold)):
            raise OptionError(f"-{self.options_stem}pattern_threshold must be >= 0, got {self.pattern_threshold}")
        if self.overlap < 0:
            raise OptionError(f"-{self.options_stem}overlap must be >= 0, got {self.overlap}")
        if self.ordering:
            check_ordering(self.ordering, f"-{self.options_stem}ordering")
        if not (self.symmetry_tol >= 0 and np.isfinite(self.symmetry_tol)):
            raise OptionError(f"-{self.options_stem}symmetry_tol must be >= 0, got {self.symmetry_tol}")

    def _ordering(self) -> str:
        """The local ordering in effect: the option, else the subclass's default."""
        return self.ordering or DEFAULT_ORDERING

    def setUp(self, pc: PETSc.PC) -> None:
        try:
            self._setup(pc)
        except Exception:
            self._destroy_factor()
            raise
        finally:
            self._end_setup()

    def _end_setup(self) -> None:
        """Free what one setup kept for itself (the factor layout; subclasses add theirs)."""
        self._setup_layout = None

    def _take_prebuilt(self) -> dict | None:
        """Subclass hook: this setup's factor already assembled for exactly the values :meth:`_revise`
        returned (``factor``, ``stats``, ``G``, ``GT``), handed over once; None: assemble it here."""
        return None

    def reset(self, pc: PETSc.PC) -> None:
        self._destroy_factor()
        self._pattern_cache.clear()
        self._same_structure = False
        self._overlap_cache.clear()
        self._ordering_cache.clear()

    def destroy(self, pc: PETSc.PC) -> None:
        self.reset(pc)

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        # Called every iteration: no context-manager overhead here.
        self._apply_event.begin()
        self.G.mult(x, self._work)
        self.GT.mult(self._work, y)
        self._apply_event.end()

    def applyTranspose(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        # M = Gᵀ G is symmetric.
        self.apply(pc, x, y)

    def matApply(self, pc: PETSc.PC, X: PETSc.Mat, Y: PETSc.Mat) -> None:
        with self._logged(self.name + "Apply"):
            T = self.G.matMult(X)
            Z = self.GT.matMult(T)
            Z.copy(Y)
            T.destroy()
            Z.destroy()

    def view(self, pc: PETSc.PC, viewer: PETSc.Viewer) -> None:
        viewer.printfASCII(f"  {self.name}: factored sparse approximate inverse M = G^T G\n")
        for line in self._view_lines():
            viewer.printfASCII(f"    {line}\n")

    # -- views and stats ----------------------------------------------------
    def _view_lines(self) -> list[str]:
        lines = [
            f"pattern level {self.pattern_level} (threshold {self.pattern_threshold:g}), overlap {self.overlap}, "
            f"local ordering {self._ordering()}",
        ]
        if self.G is None:
            lines.append("not set up")
            return lines
        st = self.stats
        lines.append(
            f"nnz(G) = {st['nnz_G']}, nnz(tril A) = {st['nnz_trilA']}, fill ratio {st['fill']:.3f}"
        )
        lines.append(f"Kaporin score -(2/n) sum log G_ii (normalised rows): {st['kaporin']:.6f}")
        symmetry = f"on, tol {self.symmetry_tol:g}" if self.check_symmetry else "off"
        lines.append(f"G and G^T: Mat type {st.get('G_type', '?')} (the operator's storage family); "
                     f"symmetry check {symmetry}")
        lines.append("reused from the previous setup (same nonzero structure): "
                     + (", ".join(st.get("reused", [])) or "nothing"))
        lines.append(
            "setup times (s, max over ranks): "
            + ", ".join(f"{k} {v:.3g}" for k, v in self.stats.get("times", {}).items())
        )
        return lines

    @contextmanager
    def _logged(self, name: str) -> Iterator[None]:
        ev = _event(name)
        ev.begin()
        try:
            yield
        finally:
            ev.end()

    @contextmanager
    def _timed(self, stage: str, event: str | None = None) -> Iterator[None]:
        t0 = time.perf_counter()
        if event is None:
            yield
        else:
            with self._logged(event):
                yield
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t0

    # -- set-up ----------------------------------------------------------------
    def _destroy_factor(self) -> None:
        for obj in (self.G, self.GT, self._work):
            if obj is not None:
                obj.destroy()
        self.G = self.GT = self._work = None
        self._structure = None
        self._kept = None

    def _check_global(self, P: PETSc.Mat) -> None:
        """Checks whose answer is the same on every rank (so raising is safe)."""
        _require_real_scalars()
        m, n = P.getSize()
        if m != n:
            raise OperatorError(f"{self.name} needs a square operator, got {m} x {n}")
        if m == 0:
            raise OperatorError(f"{self.name}: the operator is empty (0 x 0)")
        mtype = P.getType()
        if "aij" not in mtype:
            raise OperatorError(
                f"{self.name} needs an assembled AIJ/BAIJ/SBAIJ matrix, got type '{mtype}'; "
                "with Firedrake use mat_type 'aij' or wrap it in firedrake.AssembledPC"
            )
        if not P.assembled:
            raise OperatorError(f"{self.name}: the operator is not assembled (call Mat.assemble() first)")

    def _local_block(self, P: PETSc.Mat) -> _LocalBlock:
        """The local (possibly overlapped) block; collective when overlapping."""
        rstart, rend = P.getOwnershipRange()
        size = P.getComm().getSize()
        if self.overlap == 0 or size == 1:
            local = P if size == 1 else P.getDiagonalBlock()
            csr = mat_to_csr(local)
            return _LocalBlock(csr, np.arange(rstart, rend), np.arange(rend - rstart))
        # Reuse the overlap IS and the submatrix only for the same matrix with the same
        # local nonzero count; decided collectively (recomputing is collective).
        key = (self.overlap, P.handle, P.getSize(), (rstart, rend), int(P.getInfo()["nz_used"]))
        cache = self._overlap_cache
        if P.getComm().tompi4py().allreduce(cache.get("key") != key, op=MPI.LOR):
            iset = PETSc.IS().createStride(rend - rstart, first=rstart, step=1, comm=PETSc.COMM_SELF)
            P.increaseOverlap(iset, self.overlap)  # collective; grows iset in place
            iset.sort()
            cache.clear()
            cache.update(key=key, iset=iset, submats=None)
        iset = cache["iset"]
        cache["submats"] = P.createSubMatrices(iset, submats=cache["submats"])
        idx = iset.getIndices().astype(np.int64)
        owned = np.flatnonzero((idx >= rstart) & (idx < rend))
        return _LocalBlock(mat_to_csr(cache["submats"][0]), idx, owned)

    def _reordered(self, block: _LocalBlock, block_size: int) -> tuple[_LocalBlock, bool]:
        """The block in the local ordering (the permutation is reused while the structure is the same).

        Only the owned rows are reordered; halo rows of an overlapped block keep their
        places before (lower ranks) and after (higher ranks) them.  So G stays triangular
        in one global order -- the ranks in turn, each in its own ordering -- and is
        nonsingular with any overlap.  Row ``i`` of the result is row ``perm[i]`` of
        ``block``; its ``owned`` rows stay in the order of the assembled factor's rows."""
        ordering = self._ordering()
        cache = self._ordering_cache
        digest = self._block_structure  # the one digest of the structure in a setup (see _fingerprint)
        same = cache.get("key") == (ordering, block_size) and cache["structure"] == digest
        if not same:
            cache.clear()
            perm = None
            if ordering != "natural" and len(block.owned):
                first, count = int(block.owned[0]), len(block.owned)  # owned rows are contiguous
                if count == block.csr.n:  # no halo rows: the block is the owned block (no copy)
                    own = block.csr
                else:
                    own = block.csr.take_rows(block.owned)
                    own = own.select((own.indices >= first) & (own.indices < first + count))
                    own.indices -= first
                inner = local_permutation(own, ordering, block_size)
                if inner is not None:
                    n = block.csr.n
                    perm = np.concatenate([np.arange(first), first + inner, np.arange(first + count, n)])
            cache.update(key=(ordering, block_size), structure=digest, perm=perm)
            if perm is not None:
                cache["global_index"] = block.global_index[perm]
                cache["owned"] = inverse(perm)[block.owned]
        else:
            self._reused.append("ordering")
        perm = cache["perm"]
        if perm is None:
            return block, False
        # The reordered structure and where each entry comes from (4 bytes per entry) are kept from the
        # second setup of a structure on, when values are seen to change on it (Newton, time steps): a
        # first setup's peak memory does not carry them; later setups permute by one gather.
        permuted = cache.get("permuted")
        if permuted is None:
            permuted = permuted_structure(block.csr, perm)
            if same:
                cache["permuted"] = permuted
        indptr, indices, source = permuted
        del permuted
        return _LocalBlock(CSR(indptr, indices, block.csr.data[source]), cache["global_index"], cache["owned"]), True

    def _scaled_operator(self, block: _LocalBlock) -> tuple[CSR, np.ndarray]:
        check_operator(block.csr, block.global_index)
        ahat, dinv = scale_symmetric(block.csr)
        if self.check_symmetry:  # the couplings between ranks: check_couplings, in _setup
            with self._timed("symmetry check"):
                check_local(ahat, self.symmetry_tol, self.name, self.options_stem + "check_symmetry",
                            block.global_index)
        # Â's structure is a function of the block's and of the ordering: keyed by both (no second digest)
        structure = (self._ordering_cache["key"], self._ordering_cache["structure"])
        self._same_structure = self._pattern_cache.get("structure") == structure
        if not self._same_structure:
            self._pattern_cache.clear()
            self._pattern_cache["structure"] = structure
        return ahat, dinv

    def _scaled_mat(self, ahat: CSR) -> PETSc.Mat:
        """Â as a PETSc matrix, for the products of the level >= 2 patterns (its structure is kept
        between setups and refilled while it is the same)."""
        cache = self._pattern_cache
        if "ahat_mat" in cache:  # (the cache holds only what was built for this structure)
            self._reused.append("scaled operator's structure")
            return csr_to_mat(ahat, out=cache["ahat_mat"])
        cache["ahat_mat"] = csr_to_mat(ahat)
        return cache["ahat_mat"]

    def _pattern(self, ahat: CSR) -> tuple[CSR, np.ndarray | None]:
        cache = self._pattern_cache
        key = (self.pattern_level, self.pattern_threshold)
        if self.pattern_level == 1 and cache.get("pattern_key") == key:  # S = tril(Â): a gather of Â's values
            self._reused.append("pattern")
            return cache["pattern"].with_data(ahat.data[cache["lower_mask"]]), None
        if self.pattern_level == 1:
            self._new_pattern()
            mask = ahat.indices <= ahat.rows(ahat.indices.dtype)
            cache.update(pattern_key=key, pattern=ahat.select(mask), lower_mask=mask)
            return cache["pattern"], None
        # level >= 2: the powers' symbolic products are kept with the structure; the thresholded pattern
        # depends on the values, and while it comes out the same, what was built on it still serves
        powers = cache.setdefault("powers", {})  # Â^k and where tril(Â^k) lies: functions of Â's structure
        if powers:
            self._reused.append("symbolic products")
        s, a2 = factor_pattern(ahat, self._scaled_mat(ahat), self.pattern_level, self.pattern_threshold, powers)
        old = cache.get("pattern") if cache.get("pattern_key") == key else None
        if old is not None and np.array_equal(old.indptr, s.indptr) and np.array_equal(old.indices, s.indices):
            self._reused.append("pattern")
            return old.with_data(s.data), a2
        self._new_pattern()
        cache.update(pattern_key=key, pattern=s)
        return s, a2

    def _new_pattern(self) -> None:
        """Drop what was built on the previous pattern (FSAI's plan, the factor's layout, the graph's topology)."""
        self._pattern_cache.pop("fsai_plan", None)
        self._pattern_cache.pop("layout", None)
        self._pattern_cache.pop("topology", None)

    def _fsai_plan(self, ahat: CSR, s: CSR, block: _LocalBlock, build: bool = True) -> FSAIPlan | None:
        """The :class:`FSAIPlan` of this setup's pattern and owned rows, kept with the pattern (a setup with
        new values on the same structure reuses it, and says so); ``build=False``: only a kept one (or None)."""
        cache = self._pattern_cache
        key = (len(block.owned), int(block.owned[0]) if len(block.owned) else -1)
        if "fsai_plan" not in cache or cache["fsai_plan_rows"] != key:
            if not build:
                return None
            cache.update(fsai_plan=FSAIPlan(ahat, s, block.owned), fsai_plan_rows=key, fsai_plan_setup=self._setups)
        elif cache["fsai_plan_setup"] != self._setups and "FSAI plan" not in self._reused:
            self._reused.append("FSAI plan")
        return cache["fsai_plan"]

    def _fsai(self, ahat: CSR, s: CSR, block: _LocalBlock) -> np.ndarray:
        """FSAI's values on this setup's pattern (its owned rows), through the structure's plan."""
        plan = self._fsai_plan(ahat, s, block)
        if "FSAI plan" in self._reused:  # values change on a structure seen before (Newton, time steps): from
            plan.keep_positions(ahat, s)  # now on gather A[J, J] where a first setup's budget did not keep them
        return fsai_values(ahat, s, rows=block.owned, global_index=block.global_index, plan=plan)

    def _normalised(self, ahat: CSR, s: CSR, block: _LocalBlock, g: np.ndarray) -> np.ndarray:
        """Values ``g`` on S with every row scaled to (G Â Gᵀ)_ii = 1: through the positions of each row's
        Â[J, J] in the structure's FSAI plan when one is kept (the guard or an FSAI fallback built it) or the
        structure is seen again (a re-setup: the plan is built once and kept, like the factor's layout) and
        the block has no halo rows and its pairs fit a first setup's budget, else by scipy's sparse products (at
        10^5 dofs, P1: 0.021 s; through a kept plan 0.010 s, building one 0.009 s; at 10^6 building one cost 0.70 s
        against the products' 0.41 s; 3D elasticity at 10^5, 6.9 pairs per nonzero: the plan 0.35 s, the
        products 0.26 s)."""
        if len(block.owned) == s.n:
            plan = self._fsai_plan(ahat, s, block, build="pattern" in self._reused)
            if plan is not None and plan.a_positions is not None and plan.few_pairs:
                return normalised_on_plan(ahat, s, g, plan)
        return normalise_rows(s.with_data(g), ahat)

    def _factor_values(self, ahat: CSR, s: CSR, a2: np.ndarray | None,
                       block: _LocalBlock, block_size: int) -> np.ndarray:
        raise NotImplementedError

    def _prepare(self, P: PETSc.Mat) -> None:
        """Subclass hook run on every rank before the local stage (may raise)."""

    def _local_problem(self, P: PETSc.Mat, block: _LocalBlock) -> _LocalProblem:
        """Reorder, check, scale and take the pattern of this rank's block (may raise)."""
        with self._timed("ordering", self.name + "Ordering"):
            block, reordered = self._reordered(block, P.getBlockSize())
        with self._timed("scale"):
            ahat, dinv = self._scaled_operator(block)
        block = _LocalBlock(ahat, block.global_index, block.owned)  # A's own values are not needed again
        with self._timed("pattern", self.name + "Pattern"):
            s, a2 = self._pattern(ahat)
        return _LocalProblem(block, reordered, ahat, dinv, s, a2)

    def _before_values(self, P: PETSc.Mat) -> None:
        """Subclass hook, collective: runs on every rank once every rank has its local problem."""

    def _revise(self, P: PETSc.Mat, prob: _LocalProblem, g: np.ndarray) -> np.ndarray:
        """Subclass hook, collective: revise the factor values of every rank together
        (the GCVAE's guard); runs on every rank after every rank has its values."""
        return g

    def _local_factor(self, P: PETSc.Mat, prob: _LocalProblem, g: np.ndarray) -> tuple[CSR, dict]:
        """Owned rows of G = Ĝ D^-1/2 with global column indices, plus stats.  Where the values go is
        :meth:`_factor_layout` (kept from a structure's second setup on); here only values are moved."""
        cache = self._pattern_cache
        layout = cache.get("layout") if "pattern" in self._reused else self._setup_layout
        if layout is None:
            layout = self._factor_layout(prob)
            if "pattern" in self._reused:  # a structure seen again: keep where the values go
                cache["layout"] = layout
            else:  # for this setup's other factors only (the guard's trials): not kept past it
                self._setup_layout = layout
        g_own = g[layout["source"]]
        diag = g[layout["diagonal"]]
        if not (np.all(np.isfinite(g_own)) and np.all(diag > 0)):
            raise PCGCVAEError(f"{self.name}: the generated factor has non-finite values or a non-positive diagonal")
        g_own *= prob.dinv[layout["local_columns"]]
        factor = CSR(layout["indptr"], layout["columns"], g_own)
        stats = {"n": factor.n, "nnz_G": factor.nnz, "nnz_trilA": layout["nnz_trilA"],
                 "sum_log_diag": float(np.sum(np.log(diag)))}
        return factor, stats

    def _factor_layout(self, prob: _LocalProblem) -> dict:
        """Where the owned rows of G come from: per entry, in G's row order with global columns sorted in
        every row, its position in the pattern's values (``source``) and its local column (for D^-1/2);
        per row, the position of its diagonal; and nnz(tril A) of the owned rows.  Structure only."""
        block, s = prob.block, prob.s
        owned = np.asarray(block.owned, dtype=np.int64)
        indptr, source = s.row_positions(owned)
        columns = block.global_index[s.indices[source]].astype(indptr.dtype)
        if prob.reordered:  # relabelled columns: sort every row again (M = GᵀG is unchanged); scipy, in place
            rows = sp.csr_matrix((source, columns, indptr), shape=(len(owned), int(columns.max(initial=0)) + 1))
            rows.has_sorted_indices = False
            rows.sort_indices()
            source, columns = rows.data, rows.indices
        return {"indptr": indptr, "columns": columns, "source": source, "local_columns": s.indices[source],
                "diagonal": s.indptr[owned + 1] - 1, "nnz_trilA": block.csr.lower_count(block.owned)}

    def _collective(self, comm: PETSc.Comm, work):  # noqa: ANN001, ANN202
        """Run ``work()`` on every rank; if it raised anywhere, raise on every rank an error that
        names each failing rank's problem (so no rank is left waiting in a later collective)."""
        error, err_type, result = None, PCGCVAEError, None
        try:
            result = work()
        except Exception as exc:
            error = str(exc) if isinstance(exc, PCGCVAEError) else f"{type(exc).__name__}: {exc}"
            err_type = type(exc) if isinstance(exc, PCGCVAEError) else PCGCVAEError
        errors = comm.tompi4py().allgather(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            where = "; ".join(f"rank {r}: {e}" if comm.getSize() > 1 else e for r, e in failed)
            raise err_type(f"{self.name} setup failed: {where}")
        return result

    def _setup(self, pc: PETSc.PC) -> None:
        self._setups += 1
        self.times = {}
        t0 = time.perf_counter()
        _, P = pc.getOperators()
        self._check_global(P)
        comm = P.getComm()
        mpicomm = comm.tompi4py()
        self._reused = []
        self._parallel = comm.getSize() > 1
        if self.check_symmetry and self._parallel:  # the couplings between ranks too; collective
            with self._timed("symmetry check"):
                check_couplings(P, self.symmetry_tol, self.name, self.options_stem + "check_symmetry")
        with self._timed("local block"):
            blocks = [self._local_block(P)]  # collective with overlap
            fingerprint = self._fingerprint(P, blocks[0])
        if self._keeps_factor(comm, fingerprint):  # collective: the same values and options on every rank
            self._reused = ["the factor itself (same operator values and options)"]
            self.times["total"] = time.perf_counter() - t0
            self.stats.update(times=self._max_times(mpicomm), reused=self._reused)
            return
        self.stats = {"block_size": P.getBlockSize()}

        def local_problem() -> _LocalProblem:
            self._prepare(P)
            return self._local_problem(P, blocks.pop())  # the block in the given order is not kept

        prob = self._collective(comm, local_problem)
        self._before_values(P)
        g = self._collective(comm, lambda: self._factor_values(prob.ahat, prob.s, prob.a2, prob.block,
                                                               P.getBlockSize()))
        g = self._revise(P, prob, g)
        trial = self._take_prebuilt()
        if trial is not None:
            factor, stats, prebuilt = trial["factor"], trial["stats"], (trial["G"], trial["GT"])
        else:
            factor, stats = self._collective(comm, lambda: self._local_factor(P, prob, g))
            prebuilt = None
        with self._timed("assembly", self.name + "Assembly"):
            self._assemble(P, factor, prebuilt)
        local = np.array([stats["n"], stats["nnz_G"], stats["nnz_trilA"], stats["sum_log_diag"]], dtype=np.float64)
        totals = np.empty_like(local)
        mpicomm.Allreduce(local, totals, op=MPI.SUM)
        everyone_reused = mpicomm.allgather(self._reused)  # once: ranks may have reused different things
        self.times["total"] = time.perf_counter() - t0
        self.stats.update(
            n=int(totals[0]),
            nnz_G=int(totals[1]),
            nnz_trilA=int(totals[2]),
            fill=float(totals[1] / max(totals[2], 1.0)),
            kaporin=float(-2.0 * totals[3] / max(totals[0], 1.0)),
            times=self._max_times(mpicomm),
            # what every rank took over from the previous setup (same nonzero structure)
            reused=[r for r in self._reused if all(r in other for other in everyone_reused)],
            G_type=self.G.getType(),
        )
        self._kept = fingerprint

    def _max_times(self, mpicomm: MPI.Comm) -> dict[str, float]:
        """This setup's stage times, the maximum over ranks (collective; ranks may have run different
        stages: a rank without rows skips inference)."""
        seen = set().union(*mpicomm.allgather(list(self.times)))
        names = [k for k in _STAGES if k in seen] + sorted(seen - set(_STAGES))
        local_t = np.array([self.times.get(k, 0.0) for k in names])
        tmax = np.empty_like(local_t)
        mpicomm.Allreduce(local_t, tmax, op=MPI.MAX)
        return dict(zip(names, tmax.tolist()))

    def _fingerprint(self, P: PETSc.Mat, block: _LocalBlock) -> tuple:
        """What this rank's factor is a function of: the operator's sizes, type and block size, the rank's
        block (its structure and values by digest; with overlap its halo rows' global indices too) and the
        options in effect.  Keeps the structure's digest for the ordering's cache."""
        csr = block.csr
        self._block_structure = structure_digest(csr.indptr, csr.indices)
        halo = len(block.owned) < csr.n
        values = structure_digest(csr.data, block.global_index) if halo else structure_digest(csr.data)
        return (P.getSizes(), P.getOwnershipRange(), P.getType(), P.getBlockSize(), self._settings(),
                self._block_structure, values)

    def _settings(self) -> tuple:
        """The options in effect: every public attribute of a plain type (lists as tuples), but the results
        a setup stores (:attr:`_results`).  Options read later, or set from Python, count all the same."""
        plain = (bool, int, float, str, type(None), tuple)
        items = ((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(vars(self).items())
                 if not k.startswith("_") and k not in self._results)
        return tuple((k, v) for k, v in items if isinstance(v, plain))

    _results: tuple[str, ...] = ("G", "GT")  # public attributes a setup writes (not options)

    def _keeps_factor(self, comm: PETSc.Comm, fingerprint: tuple) -> bool:
        """Whether every rank's factor was built for exactly this operator and these options (a re-setup
        with unchanged values: a reassembled Firedrake form, a KSP set up again), so G is kept as it is;
        collective."""
        same = self.G is not None and self._kept == fingerprint and self._may_keep_factor()
        return bool(comm.tompi4py().allreduce(same, op=MPI.LAND))

    def _may_keep_factor(self) -> bool:
        """Subclass hook: False where the options ask for the factor to be built again anyway."""
        return True

    def _assemble(self, P: PETSc.Mat, factor: CSR,
                  prebuilt: tuple[PETSc.Mat, PETSc.Mat] | None = None) -> None:
        """Install G and Gᵀ for ``factor``: new matrices (or ``prebuilt``, (G, Gᵀ) already assembled
        from the same values) when the structure changed, else new values in the existing ones."""
        comm = P.getComm()
        ia, ja, va = petsc_arrays(factor)
        family = matrix_family(P.getType())
        key = (P.getSizes(), family)
        # the same pattern (reused: same Â structure, ordering and level-1 key) gives G the same structure;
        # a recomputed pattern (level >= 2: it depends on the values) is compared by a digest
        digest = None if "pattern" in self._reused else structure_digest(ia, ja)
        structure_changed = (
            self._structure is None
            or self._structure[0] != key
            or (digest is not None and self._structure[1] != digest)
        )
        if comm.tompi4py().allreduce(structure_changed, op=MPI.LOR):
            self._destroy_factor()
            if prebuilt is not None:  # the guard's trial already assembled these values (same on every rank)
                self.G, self.GT = prebuilt
            else:
                self.G, self.GT = factor_pair(P, factor)
            self._work = self.G.createVecLeft()
            self._structure = (key, digest)
        else:
            if prebuilt is not None:
                for mat in prebuilt:
                    mat.destroy()
            self.G.setValuesCSR(ia, ja, va)  # same structure: overwrite the values (rows offset by rstart)
            self.G.assemble()
            self.G.transpose(self.GT)
            self._reused.append("G's structure")


class FSAIPC(SPAIFactorPC):
    """Classical FSAI: the exact Kaporin minimiser on the chosen pattern.

    ``-pc_type python -pc_python_type pcgcvae.FSAIPC``; options
    ``-pc_fsai_pattern_level``, ``-pc_fsai_pattern_threshold``, ``-pc_fsai_overlap``,
    ``-pc_fsai_ordering`` (``natural``, ``nd`` -- the default --, ``rcm``, ``qmd``, ``1wd``).
    """

    options_stem = "pc_fsai_"
    name = "FSAI"

    def _factor_values(self, ahat: CSR, s: CSR, a2: np.ndarray | None,
                       block: _LocalBlock, block_size: int) -> np.ndarray:
        with self._timed("fsai", "FSAIFactor"):
            return self._fsai(ahat, s, block)


class GCVAEPC(SPAIFactorPC):
    """The learned SPAI: a GCVAE generates G from the operator's own graph.

    ``-pc_type python -pc_python_type pcgcvae.GCVAEPC``; options
    ``-pc_gcvae_model NAME|PATH`` (default: ``poisson`` for block size 1,
    ``elasticity`` otherwise), ``-pc_gcvae_samples K`` (keep the best of K by
    Kaporin score), ``-pc_gcvae_latent mean|sample`` (with ``mean`` the first
    candidate is the prior mean), ``-pc_gcvae_seed``,
    ``-pc_gcvae_pattern_level``, ``-pc_gcvae_pattern_threshold``,
    ``-pc_gcvae_overlap``, ``-pc_gcvae_ordering`` (the local ordering before the pattern
    is taken; default: the one the model was trained with), ``-pc_gcvae_fallback error|fsai`` (what to do with
    an operator whose block size the model was not trained for, e.g. the
    block-size-6 coarse levels of GAMG on 3D elasticity: refuse, the
    default, or build classical FSAI on it and say so in ``view``),
    ``-pc_gcvae_role krylov|smoother`` (which shipped model serves by default:
    the one tuned for CG, or the one for multigrid smoothing; see
    :func:`pcgcvae.training.checkpoint.default_model_name`).

    The guard (see :meth:`_revise`): ``-pc_gcvae_guard_threshold T`` (the sampled Kaporin gap above
    which FSAI is built instead; default: the model's calibration; < 0 turns the whole guard off),
    ``-pc_gcvae_guard_fraction F`` (of each rank's rows sampled), ``-pc_gcvae_guard_steps K`` (CG steps
    per candidate in the spectral check; 0: the Kaporin gap alone), ``-pc_gcvae_guard_ratio R``
    (keep a candidate whose predicted iterations are at most R times FSAI's),
    ``-pc_gcvae_guard_predictor energy|condition|mean`` (how the short CG runs predict the iterations),
    ``-pc_gcvae_guard_start random|near-nullspace|translations`` (the short runs' exact solution: random,
    or a combination of the operator's near-nullspace vectors -- random when it has none -- or of its
    translations),
    ``-pc_gcvae_guard_smooth N`` (damped-Jacobi sweeps on the short runs' random exact solution),
    ``-pc_gcvae_guard_full_iterations N`` (where FSAI's short run extrapolates to at most N iterations, FSAI's
    CG runs to convergence, at most N iterations, and if it converged the same whole solves decide; 0: never),
    ``-pc_gcvae_guard_full_rows N`` (at or below N global rows, each candidate's CG runs to convergence
    on a random right-hand side instead, and the model's factor is kept only if it took fewer iterations;
    0: never),
    ``-pc_gcvae_guard_alphas a,b,...`` (candidate blends G_FSAI + α (G_GCVAE − G_FSAI), default 1),
    ``-pc_gcvae_guard_recheck`` (measure again on a re-setup with the same structure).
    """

    options_stem = "pc_gcvae_"
    name = "GCVAE"
    _results = ("G", "GT", "fallback_reason", "model")

    def __init__(self) -> None:
        super().__init__()
        self.model_name = ""
        self.samples = 1
        self.latent = "mean"
        self.seed = 0
        self.fallback = "error"
        self.role = "krylov"
        self.guard_threshold: float | None = None  # None: the model's calibrated threshold
        self.guard_fraction = DEFAULT_FRACTION
        self.guard_recheck = False
        self.guard_steps = DEFAULT_STEPS
        self.guard_smooth = DEFAULT_SMOOTH
        self.guard_start: str | None = None  # None: the start the model was calibrated with, else DEFAULT_START
        self.guard_full_rows = DEFAULT_FULL_ROWS
        self.guard_full_iterations = DEFAULT_FULL_ITERATIONS
        self.guard_ratio: float | None = None  # None: the model's calibrated ratio, else DEFAULT_RATIO
        self.guard_alphas: list[float] = [1.0]
        self.guard_predictor = DEFAULT_PREDICTOR
        self._guard_cache: dict = {}  # the last decision and what it was made for
        self._trial: dict | None = None  # the kept candidate of the guard's trials: values, factor, stats, G, Gᵀ
        self._cached_guard: dict | None = None  # this setup's: the cached decision, when it holds
        self._setup_fsai: np.ndarray | None = None  # this setup's FSAI values (a residual model's base)
        self.fallback_reason = ""
        self.model = None
        self.model_info: dict = {}

    def _read_options(self, opts: PETSc.Options) -> None:
        stem = self.options_stem
        self.model_name = opts.getString(stem + "model", self.model_name)
        self.samples = opts.getInt(stem + "samples", self.samples)
        self.latent = opts.getString(stem + "latent", self.latent)
        self.seed = opts.getInt(stem + "seed", self.seed)
        self.fallback = opts.getString(stem + "fallback", self.fallback)
        self.role = opts.getString(stem + "role", self.role)
        if opts.hasName(stem + "guard_threshold"):
            self.guard_threshold = opts.getReal(stem + "guard_threshold")
        self.guard_fraction = opts.getReal(stem + "guard_fraction", self.guard_fraction)
        self.guard_recheck = opts.getBool(stem + "guard_recheck", self.guard_recheck)
        self.guard_steps = opts.getInt(stem + "guard_steps", self.guard_steps)
        self.guard_smooth = opts.getInt(stem + "guard_smooth", self.guard_smooth)
        if opts.hasName(stem + "guard_start"):
            self.guard_start = opts.getString(stem + "guard_start")
        self.guard_full_rows = opts.getInt(stem + "guard_full_rows", self.guard_full_rows)
        self.guard_full_iterations = opts.getInt(stem + "guard_full_iterations", self.guard_full_iterations)
        if opts.hasName(stem + "guard_ratio"):
            self.guard_ratio = opts.getReal(stem + "guard_ratio")
        self.guard_predictor = opts.getString(stem + "guard_predictor", self.guard_predictor)
        if opts.hasName(stem + "guard_alphas"):
            text = opts.getString(stem + "guard_alphas")
            try:
                self.guard_alphas = [float(a) for a in text.replace(",", " ").split()]
            except ValueError:
                raise OptionError(f"-pc_gcvae_guard_alphas must be a comma-separated list of numbers, "
                                  f"got '{text}'") from None

    def _validate_options(self) -> None:
        super()._validate_options()
        if self.samples < 1:
            raise OptionError(f"-pc_gcvae_samples must be >= 1, got {self.samples}")
        if self.latent not in ("mean", "sample"):
            raise OptionError(f"-pc_gcvae_latent must be 'mean' or 'sample', got '{self.latent}'")
        if self.fallback not in ("error", "fsai"):
            raise OptionError(f"-pc_gcvae_fallback must be 'error' or 'fsai', got '{self.fallback}'")
        if self.role not in ("krylov", "smoother"):
            raise OptionError(f"-pc_gcvae_role must be 'krylov' or 'smoother', got '{self.role}'")
        if self.guard_threshold is not None and not np.isfinite(self.guard_threshold):
            raise OptionError(f"-pc_gcvae_guard_threshold must be a finite number, got {self.guard_threshold}")
        if not 0 < self.guard_fraction <= 1:
            raise OptionError(f"-pc_gcvae_guard_fraction must be in (0, 1], got {self.guard_fraction}")
        if self.guard_steps < 0:
            raise OptionError(f"-pc_gcvae_guard_steps must be >= 0, got {self.guard_steps}")
        if self.guard_smooth < 0:
            raise OptionError(f"-pc_gcvae_guard_smooth must be >= 0, got {self.guard_smooth}")
        if self.guard_full_iterations < 0:
            raise OptionError(f"-pc_gcvae_guard_full_iterations must be >= 0, got {self.guard_full_iterations}")
        if self.guard_full_rows < 0:
            raise OptionError(f"-pc_gcvae_guard_full_rows must be >= 0, got {self.guard_full_rows}")
        if self.guard_ratio is not None and not (self.guard_ratio >= 0 and np.isfinite(self.guard_ratio)):
            raise OptionError(f"-pc_gcvae_guard_ratio must be a number >= 0, got {self.guard_ratio}")
        if self.guard_start is not None and self.guard_start not in STARTS:
            raise OptionError(f"-pc_gcvae_guard_start must be one of {', '.join(STARTS)}, got '{self.guard_start}'")
        if self.guard_predictor not in PREDICTORS:
            raise OptionError(f"-pc_gcvae_guard_predictor must be one of {', '.join(PREDICTORS)}, "
                              f"got '{self.guard_predictor}'")
        if not self.guard_alphas or not all(0 <= a <= 1 for a in self.guard_alphas):
            raise OptionError(f"-pc_gcvae_guard_alphas must be one or more numbers in [0, 1], got {self.guard_alphas}")

    def _ordering(self) -> str:
        """The option, else the ordering the model was trained with (natural for models that predate
        orderings); before the model is loaded (a view before setup) the words "the model's"."""
        if self.ordering:
            return self.ordering
        if not self.model_info:
            return "the model's"
        return recorded_ordering(self.model_info["meta"])

    def _model_for(self, block_size: int) -> str:
        return self.model_name or default_model_name(block_size, self.role)

    def _prepare(self, P: PETSc.Mat) -> None:
        with self._timed("model load"):  # NumPy weights (a .pt checkpoint is converted through torch), cached
            name = self._model_for(P.getBlockSize())
            self.model, self.model_info = load_inference_model(name)
        meta = self.model_info["meta"]
        bs = P.getBlockSize()
        self.fallback_reason = ""
        if bs not in meta["block_sizes"] and self.fallback == "fsai":
            self.fallback_reason = f"block size {bs} not in model '{name}' ({meta['block_sizes']})"
            return
        if bs not in meta["block_sizes"]:
            raise OperatorError(
                f"GCVAE model '{name}' was trained for block size(s) {meta['block_sizes']} "
                f"({meta['family']}), but the operator has block size {bs}; choose another -pc_gcvae_model "
                "(or -pc_gcvae_fallback fsai)"
            )
        if self.pattern_level not in meta["pattern_levels"]:
            raise OptionError(
                f"GCVAE model '{name}' supports pattern levels {meta['pattern_levels']}, "
                f"not {self.pattern_level}"
            )

    def _factor_values(self, ahat: CSR, s: CSR, a2: np.ndarray | None,
                       block: _LocalBlock, block_size: int) -> np.ndarray:
        if ahat.n == 0:  # a rank without rows (e.g. a coarse GAMG level)
            self.stats["sample_scores"] = []
            return np.zeros(0)
        cached_fsai = self._cached_guard is not None and self._cached_guard["alpha"] == 0.0
        if self.fallback_reason or cached_fsai:  # no inference when FSAI will be used anyway
            self.stats["sample_scores"] = []
            with self._timed("fsai", "FSAIFactor"):
                return self._fsai(ahat, s, block)

        base = None
        if self.model.residual:  # the network corrects FSAI's factor: FSAI first (the guard reuses it)
            with self._timed("fsai", "FSAIFactor"):
                base = self._setup_fsai = self._fsai(ahat, s, block)
                if len(block.owned) < s.n:  # overlap rows: FSAI leaves them 0; the network corrects G = I there
                    halo = np.ones(s.n, dtype=bool)
                    halo[block.owned] = False
                    base = base.copy()
                    base[s.indptr[np.flatnonzero(halo) + 1] - 1] = 1.0
        with self._timed("graph", "GCVAEGraph"):
            data = build_arrays(ahat, s, a2_on_s=a2, block_size=block_size,
                                topology=self._topology(ahat, s, block_size))
        spectral = None
        if getattr(self.model, "spectral_gate", None) is not None:  # the gate's input: log κ(F Â Fᵀ), this rank
            with self._timed("spectral input", "GCVAESpectral"):
                spectral = spectral_feature(ahat, s, base)
            self.stats["spectral_input"] = spectral
            self.stats["spectral_gate"] = float(self.model.gate(spectral))
        rng = np.random.default_rng(self.seed + 7919 * int(block.global_index[0]))
        with self._timed("inference", "GCVAEInference"):
            raws = []
            if self.latent == "mean":
                raws += self.model.generate(data, use_mean=True, base=base, spectral=spectral)
            rest = self.samples - len(raws)
            if rest > 0:
                raws += self.model.generate(data, samples=rest, rng=rng, base=base, spectral=spectral)
        del data  # the graph's feature arrays (~0.5 GB at 10^6 dofs) are not needed by the selection
        best, best_score, scores = None, np.inf, []
        with self._timed("selection", "GCVAESelect"):
            owned_diagonal = s.indptr[1:][block.owned] - 1  # where the owned rows' diagonals are (last in a row)
            for raw in raws:
                g = raw.astype(np.float64)
                if not np.all(np.isfinite(g)):
                    raise PCGCVAEError("GCVAE produced non-finite factor values")
                g = self._normalised(ahat, s, block, g)
                score = kaporin_of_diagonal(g[owned_diagonal])
                scores.append(score)
                if score < best_score:
                    best, best_score = g, score
        self.stats["sample_scores"] = scores
        return best

    def _take_prebuilt(self) -> dict | None:
        """The guard's kept candidate, assembled for its short CG run: installed as is (no second assembly)."""
        trial, self._trial = self._trial, None
        return trial

    def _end_setup(self) -> None:
        """Also free the guard's trial factor when the setup failed before installing it."""
        super()._end_setup()
        self._setup_fsai = None
        if self._trial is not None:
            for mat in (self._trial["G"], self._trial["GT"]):
                mat.destroy()
            self._trial = None

    def _topology(self, ahat: CSR, s: CSR, block_size: int) -> GraphTopology:
        """The graph's structure-only part (:func:`pcgcvae.features.graph_topology`), kept with the pattern: a
        setup with new values on the same structure gathers the features through it (and says so)."""
        cache = self._pattern_cache
        kept = cache.get("topology") if "pattern" in self._reused else None
        if kept is not None and kept.block_size == block_size:
            self._reused.append("graph topology")
            return kept
        cache["topology"] = topology = graph_topology(ahat, s, block_size)
        return topology

    # -- the guard -------------------------------------------------------------
    def _guard_threshold(self) -> tuple[float | None, str]:
        """The threshold in effect (None: the guard is off) and where it comes from."""
        if self.guard_threshold is not None:
            if self.guard_threshold < 0:
                return None, "-pc_gcvae_guard_threshold < 0"
            return self.guard_threshold, "-pc_gcvae_guard_threshold"
        calibrated = self.model_info.get("meta", {}).get("guard_threshold", {})
        if str(self.pattern_level) in calibrated:
            return float(calibrated[str(self.pattern_level)]), "the model's calibration"
        return DEFAULT_THRESHOLD, "the package default (the model records no calibration)"

    def _revise(self, P: PETSc.Mat, prob: _LocalProblem, g: np.ndarray) -> np.ndarray:
        """The guard (collective; one decision for every rank).

        1. Rows: the factor's Kaporin gap to FSAI on the same pattern, estimated from a random
           sample of every rank's rows (:mod:`pcgcvae.guard`; exact, from every row, for a residual
           model, whose FSAI values are at hand); above the threshold FSAI is built
           instead and nothing else is tried.
        2. Spectrum (``-pc_gcvae_guard_steps`` > 0): FSAI is built on every row, and each candidate
           G(α) = G_FSAI + α (G_GCVAE − G_FSAI) (α = 0, FSAI itself, and ``-pc_gcvae_guard_alphas``,
           default 1: the model's factor) runs a few CG steps on the same system P x = P x*, x* random
           or from the operator's near-nullspace (``-pc_gcvae_guard_start``; :mod:`pcgcvae.trial`); the
           candidate with the lowest predicted iteration count is kept when it beats FSAI's prediction
           by the ratio ``-pc_gcvae_guard_ratio`` (calibrated per start), else FSAI.  At or below
           ``-pc_gcvae_guard_full_rows`` global rows, or where FSAI's run extrapolates to a solve of at
           most ``-pc_gcvae_guard_full_iterations`` and its whole solve (capped there) converges, each
           candidate's CG runs to convergence on a random right-hand side instead, and a candidate is
           kept only if it took fewer iterations.

        The decision (α) is cached per nonzero structure: a re-setup with new values on the same
        structure (Newton, time steps) and the same guard settings keeps it without measuring
        again, unless ``-pc_gcvae_guard_recheck`` asks for it."""
        threshold, source = self._guard_threshold()
        self.stats["guard"] = None
        if self.fallback_reason or threshold is None:
            self.stats["guard_off"] = "fallback FSAI" if self.fallback_reason else source
            self._guard_cache = {}
            return g
        comm = P.getComm()
        fsai = None
        if self._cached_guard is not None:  # values g are already FSAI's when the decision was FSAI
            predecided = self._cached_guard.get("predecided", False)
            guard = dict(self._cached_guard, reused=not predecided, cost=0.0)
            if predecided:
                self._guard_cache = {"key": self._guard_key(P, threshold), "stats": guard}
            else:
                self._reused.append("guard decision")
        else:
            t0 = time.perf_counter()
            guard, fsai = self._decide(P, prob, g, threshold, source)
            cost = comm.tompi4py().allreduce(time.perf_counter() - t0, op=MPI.MAX)
            guard.update(reused=False, cost=cost)
            self._guard_cache = {"key": self._guard_key(P, threshold), "stats": guard}
        self.stats["guard"] = guard
        alpha = guard["alpha"]
        if self._trial is not None:  # the kept candidate's values, already assembled by its trial
            return self._trial["values"]
        if alpha == 1.0 or (alpha == 0.0 and self._cached_guard is not None):
            return g
        if fsai is None:
            fsai = self._fsai_everywhere(comm, prob)
        return fsai if alpha == 0.0 else self._blend(comm, prob, g, fsai, alpha)

    def _guard_key(self, P: PETSc.Mat, threshold: float) -> tuple:
        """What a cached guard decision was made for (besides the nonzero structure)."""
        return (threshold, self.guard_fraction, self.pattern_level, self.pattern_threshold, self._ordering(),
                self._model_for(P.getBlockSize()), self.seed, self.guard_steps, self._guard_ratio()[0],
                tuple(self.guard_alphas), self.guard_predictor, self.guard_smooth, self._guard_start(),
                self.guard_full_rows, self.guard_full_iterations)

    def _may_keep_factor(self) -> bool:
        """``-pc_gcvae_guard_recheck`` measures again on every re-setup, so nothing is kept."""
        return not self.guard_recheck

    def _short_solve(self, fsai_trial: TrialResult) -> bool:
        """Whether FSAI's short run extrapolates to a solve of at most ``-pc_gcvae_guard_full_iterations``."""
        return fsai_trial.estimated_iterations() <= self.guard_full_iterations

    def _guard_start(self) -> str:
        """The short CG runs' start in effect: the option's, else the one the model's thresholds were
        calibrated with, else the package default."""
        if self.guard_start is not None:
            return self.guard_start
        return str(self.model_info.get("meta", {}).get("guard_start", DEFAULT_START))

    def _guard_ratio(self, start: str | None = None) -> tuple[float, str]:
        """The spectral check's ratio threshold in effect and where it comes from: the option's, else the
        model's calibration for the start the short runs took (``start``, one of :data:`pcgcvae.trial.STARTS`;
        None: the start the model was calibrated with), else the package default."""
        if self.guard_ratio is not None:
            return self.guard_ratio, "-pc_gcvae_guard_ratio"
        meta = self.model_info.get("meta", {})
        level = str(self.pattern_level)
        by_start = meta.get("guard_ratio_by_start", {}).get(start or "", {})
        if level in by_start:
            return float(by_start[level]), f"the model's calibration, {start} start"
        calibrated = meta.get("guard_ratio", {})
        if level in calibrated:
            own = meta.get("guard_start", "random")
            other = "" if start in (None, own) else f" from the {own} start (none from the {start} start)"
            return float(calibrated[level]), "the model's calibration" + other
        return DEFAULT_RATIO, "the package default"

    def _before_values(self, P: PETSc.Mat) -> None:
        """Decide, on every rank alike, whether the cached guard decision holds: the same nonzero
        structure on every rank, the same guard settings, and no ``-pc_gcvae_guard_recheck``."""
        self._cached_guard = None
        threshold, _ = self._guard_threshold()
        if self.fallback_reason or threshold is None:
            return
        same = P.getComm().tompi4py().allreduce(self._same_structure, op=MPI.LAND)
        if not self.guard_recheck and same and self._guard_cache.get("key") == self._guard_key(P, threshold):
            self._cached_guard = self._guard_cache["stats"]
            return
        ratio, source = self._guard_ratio()
        if ratio == 0.0:  # no candidate can be kept: FSAI, decided before the network runs (no inference)
            n = P.getSize()[0]
            self._cached_guard = {
                "estimate": None, "threshold": threshold, "source": source, "rows": 0, "of": n, "steps": 0,
                "ratio_threshold": 0.0, "ratio_source": source, "predictor": self.guard_predictor, "trials": {},
                "alpha": 0.0, "fired": True, "signal": "ratio threshold 0", "predecided": True}

    def _fsai_everywhere(self, comm: PETSc.Comm, prob: _LocalProblem) -> np.ndarray:
        """FSAI's values on this setup's pattern (every rank; a residual model's base when built already)."""
        if comm.tompi4py().allreduce(self._setup_fsai is not None, op=MPI.LAND):
            return self._setup_fsai
        with self._timed("fsai", "FSAIFactor"):
            return self._collective(comm, lambda: self._fsai(prob.ahat, prob.s, prob.block))

    def _blend(self, comm: PETSc.Comm, prob: _LocalProblem, g: np.ndarray, fsai: np.ndarray,
               alpha: float) -> np.ndarray:
        """G(α) = G_FSAI + α (G_GCVAE − G_FSAI), rows renormalised (diag(G Â Gᵀ) = 1)."""
        def blend() -> np.ndarray:
            v = fsai + alpha * (g - fsai)
            return normalise_rows(prob.s.with_data(v), prob.ahat) if prob.s.n else v
        return self._collective(comm, blend)

    def _decide(self, P: PETSc.Mat, prob: _LocalProblem, g: np.ndarray, threshold: float,
                source: str) -> tuple[dict, np.ndarray | None]:
        """The guard's measurements and decision (``alpha``), and FSAI's values if they were built."""
        comm = P.getComm()
        ratio, ratio_source = self._guard_ratio()
        seed = self.seed + 104729 * (comm.getRank() + 1)
        with self._timed("guard", "GCVAEGuard"):
            mine = self._collective(comm, lambda: local_sample(prob.ahat, prob.s, g, prob.block.owned,
                                                               self.guard_fraction, seed, self._setup_fsai))
            samples = comm.tompi4py().allgather(mine)
            estimate = combine(samples)
        guard = {"estimate": estimate, "threshold": threshold, "source": source,
                 "rows": sum(s.sampled for s in samples), "of": sum(s.owned for s in samples),
                 "steps": self.guard_steps, "smooth": self.guard_smooth, "ratio_threshold": ratio,
                 "ratio_source": ratio_source,
                 "predictor": self.guard_predictor, "full_rows": self.guard_full_rows,
                 "full_iterations": self.guard_full_iterations,
                 "trials": {}}
        if estimate > threshold:
            guard.update(alpha=0.0, fired=True, signal="Kaporin gap")
            return guard, None
        if self.guard_steps == 0:
            guard.update(alpha=1.0, fired=False, signal="Kaporin gap")
            return guard, None
        fsai = self._fsai_everywhere(comm, prob)
        full = P.getSize()[0] <= self.guard_full_rows  # whole solves: the iteration counts themselves
        guard.update(mode="full" if full else "short", full_reason="rows" if full else None)
        with self._timed("guard", "GCVAEGuard"):
            start = "random" if full else self._guard_start()
            xstar = None if start == "random" else modes_solution(P, self.seed, start)
            if xstar is None:  # full: the right-hand side
                xstar, start = exact_solution(P, self.seed, 0 if full else self.guard_smooth), "random"
            ratio, ratio_source = self._guard_ratio(start)  # calibrated per start
            guard.update(start=start, ratio_threshold=ratio, ratio_source=ratio_source)
            trials, built = {}, {}
            try:
                for alpha in [0.0] + [a for a in self.guard_alphas if a != 0.0]:
                    values = fsai if alpha == 0.0 else g if alpha == 1.0 else self._blend(comm, prob, g, fsai, alpha)
                    factor, stats = self._collective(comm, lambda v=values: self._local_factor(P, prob, v))
                    G, GT = factor_pair(P, factor)
                    built[alpha] = {"values": values, "factor": factor, "stats": stats, "G": G, "GT": GT}
                    trials[alpha] = (full_cg(P, G, xstar, GT=GT) if full
                                     else short_cg(P, G, xstar, self.guard_steps, GT=GT))
                    if alpha == 0.0 and not full and self._short_solve(trials[0.0]):
                        # FSAI's solve looks short: its whole solve, capped, and if it converged the same whole
                        # solves of the other candidates decide exactly (as on small problems)
                        rhs = exact_solution(P, self.seed, 0)
                        whole = full_cg(P, G, rhs, GT=GT, max_it=self.guard_full_iterations)
                        guard.update(fsai_estimate=round(trials[0.0].estimated_iterations(), 1),
                                     fsai_whole=whole.steps if whole.converged else None)
                        if whole.converged:
                            full, start = True, "random"
                            xstar.destroy()
                            xstar = rhs
                            ratio, ratio_source = self._guard_ratio(start)
                            guard.update(mode="full", full_reason="iterations", start=start, ratio_threshold=ratio,
                                         ratio_source=ratio_source)
                            trials[0.0] = whole
                        else:
                            rhs.destroy()
                ratios = {a: predicted_ratio(t, trials[0.0], self.guard_predictor) for a, t in trials.items()}
                best = min(ratios, key=lambda a: (ratios[a], a))
                keep = ratios[best] <= ratio and (ratios[best] < 1.0 or not full)  # full: at least one fewer
                alpha = best if best != 0.0 and keep else 0.0
                self._trial = built.pop(alpha)  # installed as the preconditioner's G and Gᵀ (no second assembly)
            finally:
                xstar.destroy()
                for b in built.values():
                    b["G"].destroy()
                    b["GT"].destroy()
        guard.update(alpha=alpha, fired=alpha != 1.0, signal="whole CG solves" if full else "short CG",
                     trials={a: {"ratio": ratios[a], "energy_ratio": energy_ratio(t, trials[0.0]),
                                 "condition_ratio": condition_ratio(t, trials[0.0]), "reduction": t.reduction,
                                 "condition": t.condition, "steps": t.steps, "converged": t.converged}
                             for a, t in trials.items()})
        return guard, fsai

    def _guard_line(self) -> str:
        guard = self.stats.get("guard")
        if not guard:
            return f"guard off ({self.stats.get('guard_off', 'not set up')})"
        alpha = guard["alpha"]
        verdict = ("kept the GCVAE factor" if alpha == 1.0
                   else "FIRED: classical FSAI, not the GCVAE, built this factor" if alpha == 0.0
                   else f"FIRED: blend G_FSAI + {alpha:g} (G_GCVAE - G_FSAI) built this factor")
        reused = (" [decision reused from an earlier setup on the same nonzero structure; "
                  "-pc_gcvae_guard_recheck to measure again]" if guard.get("reused") else "")
        if guard.get("predecided"):
            why = guard["ratio_source"]
            if why.startswith("the model"):
                why = "the model never beat FSAI on its training distribution"
            return (f"guard: ratio threshold 0 ({why}: the model's factor is never kept): {verdict}, without "
                    f"running the network{reused}")
        line = (f"guard: estimated Kaporin gap to FSAI on the same pattern {guard['estimate']:+.4f} "
                f"({guard['rows']} of {guard['of']} rows sampled), threshold {guard['threshold']:.4f} "
                f"({guard['source']})")
        if guard["trials"] and guard.get("mode") == "full":
            why = (f"{guard['of']} rows <= {guard.get('full_rows')} (-pc_gcvae_guard_full_rows)"
                   if guard.get("full_reason", "rows") == "rows" else
                   f"FSAI's {guard['steps']}-step run extrapolated to {guard.get('fsai_estimate')} iterations <= "
                   f"{guard.get('full_iterations')} (-pc_gcvae_guard_full_iterations) and its whole solve took "
                   f"{guard.get('fsai_whole')}")
            line += (f"; {why}: CG to rtol "
                     f"{FULL_RTOL:g} per candidate on a random right-hand side, iterations "
                     + ", ".join(f"alpha {a:g}: {t['steps']}{'' if t.get('converged') else ' (not converged)'}"
                                 for a, t in sorted(guard["trials"].items()))
                     + f", kept when fewer than FSAI's (alpha 0) and the ratio <= {guard['ratio_threshold']:g} "
                       f"({guard['ratio_source']})")
        elif guard["trials"]:
            kind = guard.get("start", "random")
            start = (f"x* from the operator's {MODES_IN_WORDS[kind]}" if kind in MODES_IN_WORDS
                     else f"x* random, smoothed by {guard.get('smooth', 0)} Jacobi sweeps")
            if guard.get("start") == "random" and self._guard_start() != "random":
                start += f" (asked for the {self._guard_start()}: the operator has none of positive energy)"
            line += (f"; {guard['steps']} CG steps per candidate ({start}), predicted iterations / FSAI's "
                     f"({guard['predictor']}): "
                     + ", ".join(f"alpha {a:g}: {t['ratio']:.3f} (energy-rate ratio {t['energy_ratio']:.3f}, "
                                 f"sqrt condition ratio {t['condition_ratio']:.3f})"
                                 for a, t in sorted(guard["trials"].items()))
                     + f", kept when <= {guard['ratio_threshold']:g} ({guard['ratio_source']})")
        elif guard["steps"] == 0 and not guard["fired"]:
            line += "; short-CG check off (-pc_gcvae_guard_steps 0)"
        return f"{line}: {verdict} (decided by the {guard['signal']}; guard cost {guard['cost']:.3g} s){reused}"

    def _view_lines(self) -> list[str]:
        meta = self.model_info.get("meta", {})
        lines = [
            f"model '{self._model_for(self.stats.get('block_size', 1))}'"
            f" (family: {meta.get('family', 'not loaded')}, block sizes {meta.get('block_sizes', '?')}"
            + ("; residual: corrects classical FSAI's factor on the same pattern"
               if getattr(self.model, "residual", False) else "")
            + (", reading FSAI's values" if getattr(self.model, "fsai_inputs", False) else "") + ")",
            f"samples {self.samples} ({self.latent} latent first), seed {self.seed}, role {self.role}",
        ]
        if self.fallback_reason:
            lines.append(f"FALLBACK: classical FSAI, not the GCVAE, built this factor: {self.fallback_reason}")
        lines.append(self._guard_line())
        if "spectral_input" in self.stats:
            lines.append(f"rank-0 spectral gate: log condition estimate of F A F^T {self.stats['spectral_input']:.3f} "
                         f"(FSAI's factor, {LANCZOS_STEPS} Lanczos steps) -> correction scaled by "
                         f"{self.stats['spectral_gate']:.3f}")
        scores = self.stats.get("sample_scores")
        if scores:
            lines.append(
                "rank-0 sample Kaporin scores: " + ", ".join(f"{v:.5f}" for v in scores)
                + f" (chose {min(scores):.5f})"
            )
        return lines + super()._view_lines()
