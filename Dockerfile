# syntax=docker/dockerfile:1
# The monolith image (and, with --build-arg BIN=<service>, an extracted service's).
# Stages: plan the dependency graph, build dependencies once (cached while Cargo.lock and
# manifests are unchanged), build the binary, copy it into a small non-root runtime image.
# No Docker engine runs on the development machine this was written on: build it in CI
# or locally with `docker build -t shop .`.

ARG RUST_VERSION=1.95
ARG BIN=app

FROM lukemathwalker/cargo-chef:latest-rust-${RUST_VERSION}-slim-bookworm AS chef
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG BIN
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until a manifest or Cargo.lock changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin "${BIN}"
COPY . .
RUN cargo build --release --locked --bin "${BIN}" \
 && cp "target/release/${BIN}" /usr/local/bin/service

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
WORKDIR /app
COPY --from=builder /usr/local/bin/service /app/service
COPY config /app/config
ENV APP_ENVIRONMENT=production \
    APP_CONFIG_DIR=/app/config
USER nonroot:nonroot
EXPOSE 8080
# The binary checks its own /healthz: the image has no shell and no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/app/service", "healthcheck"]
ENTRYPOINT ["/app/service"]
