# syntax=docker/dockerfile:1
# The monolith's image. An extracted service has its own, generated from the same template
# (services/<module>/Dockerfile). Build from the repository root: docker build -t shop .
# Stages: plan the dependency graph, build the dependencies once (a layer reused while
# Cargo.lock and the manifests are unchanged), build the package, then copy its binary and
# its configuration into a small runtime image that runs as an unprivileged numeric user.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# make: the allocator's build (jemalloc, through tikv-jemalloc-sys) runs configure and
# make, and the slim image has gcc only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
# A fixed cargo-chef, so that the same sources always plan the same recipe.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The patched copies of crates (vendor/README.md): the recipe holds the workspace's members
# only, and `[patch.crates-io]` points into this folder.
COPY vendor vendor
# The build's settings (.cargo/config.toml): the dependencies compiled here with other
# settings would be compiled again by the build below.
COPY .cargo .cargo
# The dependencies of app only: this layer is reused until a manifest, Cargo.lock or a
# patched copy changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json -p app
COPY . .
RUN cargo build --release --locked -p app \
 && cp target/release/app /usr/local/bin/service

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
WORKDIR /app
COPY --from=builder /usr/local/bin/service /app/service
COPY config /app/config
ENV APP_ENVIRONMENT=production \
    APP_CONFIG_DIR=/app/config
# Numeric (distroless's nonroot): the kubelet enforces runAsNonRoot only on a numeric user.
USER 65532:65532
# 8080: the API and the probes; 9090: the admin port (/metrics, server.admin_port).
EXPOSE 8080 9090
# The binary checks its own /healthz: the image has no shell and no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/app/service", "healthcheck"]
ENTRYPOINT ["/app/service"]
