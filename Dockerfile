# syntax=docker/dockerfile:1
#
# tokengate container image.
#
#   docker build -t tokengate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/tokengate.yaml:/etc/tokengate/tokengate.yaml:ro" tokengate:0.1.0
#
# Nothing secret is in the image: the configuration is mounted at run time
# (/etc/tokengate/tokengate.yaml, a ConfigMap on Kubernetes) and the introspection
# client secret is read from the file that the config's `client_secret_file` names (a
# Secret volume). .dockerignore lets only the sources into the build context.
#
# scripts/check_deploy.py lints this file with hadolint and, since CI has no Docker
# engine, runs the build command below on a copy of the same build context and runs
# `--check-config` with that binary as user 65532. Keep the two in step.

# The builder's Debian release must match the runtime image's (bookworm = Debian 12):
# the binary links glibc dynamically and must not need a newer glibc than the runtime
# has. Release pipelines should pin both images by digest as well.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between builds
# (BuildKit); the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin tokengate \
    && install -D -m 0755 target/release/tokengate /out/tokengate

# distroless/cc: glibc, libgcc and CA certificates, no shell, no package manager.
# (cc rather than static: aws-lc-rs and the binary link glibc dynamically.)
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tokengate" \
      org.opencontainers.image.description="Token verifier for nginx auth_request, Traefik forwardAuth and Envoy ext_authz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/tokengate /usr/local/bin/tokengate

# 65532 is distroless's `nonroot` user. Numeric, so that Kubernetes' runAsNonRoot can
# verify it without a runAsUser.
USER 65532:65532

# 8080: the auth listener (/auth, /ext-authz/…) that the proxies call.
# 9090: the admin listener (/healthz, /readyz, /metrics); keep it off the proxy-facing
# network.
EXPOSE 8080 9090

# No HEALTHCHECK: the image has no shell and no curl to run one. Orchestrators probe
# the admin listener instead (Kubernetes: liveness /healthz, readiness /readyz on
# port 9090; see deploy/kubernetes/base/deployment.yaml).
#
# Exec form, so tokengate is PID 1 and receives SIGTERM itself: /readyz turns
# not-ready at once and the process exits within `shutdown.grace` (20 s by default).
ENTRYPOINT ["/usr/local/bin/tokengate"]
CMD ["--config", "/etc/tokengate/tokengate.yaml"]
