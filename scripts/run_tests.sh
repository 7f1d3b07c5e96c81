#!/usr/bin/env bash
# The whole test suite: serial pytest, then the MPI tests under 2 and 3 ranks.
# Run it through `make test` (which installs the stack first) or, with the
# stack's environment active (source scripts/stack_env.sh), directly.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
PYTEST=(python -m pytest -p no:cacheprovider)
status=0
t0=$(date +%s)
# Tiny models trained in-test by the serial run are reused by the MPI runs.
PCGCVAE_TEST_MODELS=$(mktemp -d -t pcgcvae-test-models-XXXXXX)
export PCGCVAE_TEST_MODELS
trap 'rm -rf "$PCGCVAE_TEST_MODELS"' EXIT
echo "== ruff"
ruff check pcgcvae tests firedrake_demos setup.py || status=1
echo "== serial tests"
"${PYTEST[@]}" tests --ignore=tests/mpi "$@" || status=1
for n in 2 3; do
  echo "== MPI tests on $n ranks"
  timeout 1200 mpiexec --allow-run-as-root --oversubscribe -n "$n" \
    "${PYTEST[@]}" tests/mpi -q "$@" || status=1
done
echo "== test suite finished in $(( $(date +%s) - t0 )) s, status $status"
exit $status
