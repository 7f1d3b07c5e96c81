#!/usr/bin/env bash
# Build (once) and activate-check the pcgcvae stack:
#   Debian packages -> PETSc 3.26.0 (from the PyPI sdist) -> venv with
#   petsc4py/mpi4py/h5py (MPI), firedrake 2026.10.0, torch 2.13.0 (CPU),
#   torch_geometric, and pcgcvae (editable).
#
# The stack lives in a versioned cache outside the repository:
#   ${PCGCVAE_STACK:-$HOME/.cache/pcgcvae/stack-<version key>}
# Each stage writes a stamp only when it finished; a stage without its stamp
# is wiped and rebuilt, so a half-finished build is never reused.  When the
# whole cache is complete this script is a fast no-op (it only re-points the
# editable install of pcgcvae at this checkout when needed).
#
# Used by the Makefile, .ci/run and the Dockerfile (one recipe).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO/scripts/stack_version.sh"
STACK="$PCGCVAE_STACK"
PYTHON="${PCGCVAE_PYTHON:-python3}"
JOBS="${PCGCVAE_JOBS:-$(nproc)}"
VENV="$STACK/venv"
HDF5_OPENMPI=/usr/lib/x86_64-linux-gnu/hdf5/openmpi

t_start=$(date +%s)
say() { printf '[install %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }
stamp() { date -u +%FT%TZ > "$STACK/.stamp-$1"; }
have() { [ -f "$STACK/.stamp-$1" ]; }

mkdir -p "$STACK"
exec 9>"$STACK/.lock"
if ! flock -n 9; then
  say "another install holds $STACK/.lock; waiting for it"
  flock 9
fi

# ---------------------------------------------------------------- 1. Debian
APT_PACKAGES=(bison flex gfortran cmake ninja-build pkg-config zlib1g-dev
  libopenmpi-dev openmpi-bin libhdf5-openmpi-dev libhwloc-dev
  libmumps-ptscotch-dev libmetis-dev libopenblas-dev libptscotch-dev
  libscalapack-openmpi-dev libsuitesparse-dev libsuperlu-dev
  libsuperlu-dist-dev libfftw3-dev libfftw3-mpi-dev git make)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    > "$STACK/apt.log" 2>&1 || { tail -30 "$STACK/apt.log"; exit 1; }
else
  say "Debian packages present"
fi

# ----------------------------------------------------------------- 2. PETSc
if ! have petsc; then
  say "building PETSc ${PETSC_VERSION} into $PETSC_DIR (about 12 minutes on 2 cores)"
  rm -rf "$PETSC_DIR" "$STACK/petsc-src" "$STACK/dl-venv"
  "$PYTHON" -m venv "$STACK/dl-venv"
  "$STACK/dl-venv/bin/pip" install -q setuptools wheel 2>&1 | grep -v "is ignored" || true
  mkdir -p "$STACK/petsc-src"
  "$STACK/dl-venv/bin/pip" download -q --no-deps --no-build-isolation --no-binary :all: \
      -d "$STACK/petsc-src" "petsc==${PETSC_VERSION}" 2>&1 | grep -v "is ignored" || true
  tar -xzf "$STACK/petsc-src/petsc-${PETSC_VERSION}.tar.gz" -C "$STACK"
  rm -rf "$STACK/petsc-src" "$STACK/dl-venv"
  cd "$PETSC_DIR"
  OPT="-O3 -march=x86-64-v2 -mtune=generic"
  ./configure PETSC_ARCH=$PETSC_ARCH \
    --with-c2html=0 --with-debugging=0 --with-fortran-bindings=0 \
    --with-shared-libraries=1 --with-strict-petscerrorcode \
    --COPTFLAGS="$OPT" --CXXOPTFLAGS="$OPT" --FOPTFLAGS="$OPT" \
    --with-cc=mpicc --with-cxx=mpicxx --with-fc=mpif90 \
    --with-hdf5-include=/usr/include/hdf5/openmpi \
    "--with-hdf5-lib=[$HDF5_OPENMPI/libhdf5.so,$HDF5_OPENMPI/libhdf5_hl.so]" \
    --with-ptscotch --with-ptscotch-include=/usr/include/scotch \
    "--with-ptscotch-lib=-lptesmumps -lptscotch -lptscotcherr -lesmumps -lscotch -lscotcherr" \
    --with-metis --with-mumps --with-scalapack-lib=-lscalapack-openmpi \
    --with-suitesparse --with-hwloc --with-zlib --with-fftw --with-bison \
    --with-superlu_dist-include=/usr/include/superlu-dist --with-superlu_dist-lib=-lsuperlu_dist \
    --with-hypre=0 > "$STACK/petsc-configure.log" 2>&1 \
    || { tail -40 "$STACK/petsc-configure.log"; exit 1; }
  say "PETSc configured; compiling"
  make PETSC_DIR="$PETSC_DIR" PETSC_ARCH=$PETSC_ARCH MAKE_NP="$JOBS" all > "$STACK/petsc-make.log" 2>&1 \
    || { tail -40 "$STACK/petsc-make.log"; exit 1; }
  cd "$REPO"
  stamp petsc
  say "PETSc built"
else
  say "PETSc ${PETSC_VERSION} present ($PETSC_DIR/$PETSC_ARCH)"
fi

# ------------------------------------------------------------ 3. Python venv
if ! have venv; then
  say "building the Python environment in $VENV (about 10 minutes)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  say "torch ${TORCH_VERSION} (CPU) and torch_geometric"
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION}" "torch_geometric~=${PYG_VERSION}.0"
  say "firedrake ${FIREDRAKE_VERSION} with petsc4py/mpi4py/h5py built against this PETSc and MPI"
  # petsc4py's generated C file takes ~25 min at -O3 and ~2 min at -O1 with
  # the same runtime speed (the work is in libpetsc, built -O3 above).
  # PIP_NO_CACHE_DIR (also seen by the pips that fill build environments): never reuse a
  # petsc4py/mpi4py/h5py wheel that pip cached from a build against another PETSc.
  env CC=mpicc CXX=mpicxx HDF5_MPI=ON HDF5_DIR="$HDF5_OPENMPI" CFLAGS="-O1" PIP_NO_CACHE_DIR=1 \
    "$VENV/bin/pip" install -q --no-binary h5py,mpi4py,petsc4py \
      "firedrake[check]==${FIREDRAKE_VERSION}" \
    > "$STACK/pip-firedrake.log" 2>&1 || { tail -40 "$STACK/pip-firedrake.log"; exit 1; }
  "$VENV/bin/pip" install -q pytest ruff matplotlib scipy tqdm
  # Sanity: everything imports together, the versions are the pinned ones.
  OMP_NUM_THREADS=1 "$VENV/bin/python" - <<PY
import petsc4py, mpi4py, torch, torch_geometric, firedrake  # noqa: F401
from petsc4py import PETSc
v = ".".join(map(str, PETSc.Sys.getVersion()))
assert v == "${PETSC_VERSION}", v
assert torch.__version__.startswith("${TORCH_VERSION}"), torch.__version__
print("stack imports ok: PETSc", v, "torch", torch.__version__, "pyg", torch_geometric.__version__)
PY
  stamp venv
  say "Python environment built"
else
  say "Python environment present ($VENV)"
fi

# ------------------------------------------------------- 4. pcgcvae editable
if [ -f "$REPO/setup.py" ]; then
  current=$(cd "$STACK" && "$VENV/bin/python" -c "import pcgcvae, os; print(os.path.dirname(os.path.dirname(os.path.abspath(pcgcvae.__file__))))" 2>/dev/null || true)
  if [ "$current" != "$REPO" ]; then
    say "installing pcgcvae (editable) from $REPO"
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$REPO" > "$STACK/pip-pcgcvae.log" 2>&1 \
      || { tail -20 "$STACK/pip-pcgcvae.log"; exit 1; }
  fi
fi

stamp complete
say "stack ready: source $VENV/bin/activate  (PETSC_DIR=$PETSC_DIR PETSC_ARCH=$PETSC_ARCH)"
