# Versions of the pcgcvae stack and where it lives (sourced by the other scripts).
PETSC_VERSION=3.26.0
FIREDRAKE_VERSION=2026.10.0
TORCH_VERSION=2.13.0
PYG_VERSION=2.8
STACK_KEY="petsc${PETSC_VERSION}-fd${FIREDRAKE_VERSION}-torch${TORCH_VERSION}-v1"
export PCGCVAE_STACK="${PCGCVAE_STACK:-$HOME/.cache/pcgcvae/stack-${STACK_KEY}}"
export PETSC_DIR="$PCGCVAE_STACK/petsc-${PETSC_VERSION}"
export PETSC_ARCH=arch-pcgcvae-opt
