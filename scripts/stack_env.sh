# Source this to use the pcgcvae stack in your shell:
#   source scripts/stack_env.sh
# (sets PETSC_DIR/PETSC_ARCH and activates the stack's virtual environment).
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/stack_version.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source "$PCGCVAE_STACK/venv/bin/activate"
