# pcgcvae on Debian bookworm: the very same install script as `make install`
# (one recipe).  No Docker engine runs on the development machines, so this
# file is kept honest by calling scripts/install_stack.sh and nothing else.
#
#   docker build -t pcgcvae .
#   docker run --rm pcgcvae make test
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PCGCVAE_STACK=/opt/pcgcvae-stack \
    OMP_NUM_THREADS=1 \
    OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

RUN apt-get update && apt-get install -y --no-install-recommends build-essential make git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /pcgcvae
COPY . /pcgcvae
RUN bash scripts/install_stack.sh

CMD ["bash", "-lc", "source scripts/stack_env.sh && cd firedrake_demos && python poisson.py"]
