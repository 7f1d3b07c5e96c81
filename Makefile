# pcgcvae: the two commands of the README, and helpers.
#   make demo   - install the stack if needed, run the Firedrake Poisson demo
#   make test   - install the stack if needed, run the whole test suite
SHELL := /bin/bash
STACK_ENV := scripts/stack_env.sh
MPIEXEC := mpiexec --allow-run-as-root --oversubscribe
export OMP_NUM_THREADS := 1
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1

.PHONY: install demo test test-serial test-mpi lint firedrake-check

install:
	bash scripts/install_stack.sh

demo: install
	source $(STACK_ENV) && cd firedrake_demos && python poisson.py $(DEMO_ARGS)

test: install
	source $(STACK_ENV) && bash scripts/run_tests.sh

lint: install
	source $(STACK_ENV) && ruff check pcgcvae tests firedrake_demos setup.py

firedrake-check: install
	source $(STACK_ENV) && firedrake-check
