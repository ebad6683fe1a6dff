# syntax=docker/dockerfile:1.10
# swisper-ingest container image.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t registry.example.com/swisper/swisper-ingest:0.1.0 .
#
# VERSION must be the version in Cargo.toml: the build stops when the binary
# reports another one, so the image label never lies about what runs.

# Builder and runtime share Debian 12 (bookworm), so the binary's glibc
# symbols exist at run time.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
# Runtime: distroless "cc" carries glibc, libgcc and CA certificates and
# nothing else: no shell, no package manager, no coreutils. The service needs
# none of them (the chart's probes are HTTP, its preStop hook is the kubelet's
# own sleep), and an attacker in the container finds no tools. The ":nonroot"
# variant runs as uid/gid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
ARG VERSION=0.1.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# .dockerignore keeps the context to the workspace: manifests, lock file,
# src/, migrations/ (embedded at compile time), loadtests/, benches/, tests/.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin swisper-ingest \
    && install -D -m 0755 target/release/swisper-ingest /out/swisper-ingest
RUN reported="$(/out/swisper-ingest --version)" \
    && if [[ "$reported" != "swisper-ingest ${VERSION}" ]]; then \
         echo "VERSION=${VERSION} but the binary reports: ${reported}" >&2; exit 1; \
       fi

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="swisper-ingest" \
      org.opencontainers.image.description="SwisperStudio observability ingestion: Redis Streams consumer group to PostgreSQL" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/swisper-ingest /usr/local/bin/swisper-ingest
# Listen on every interface inside the pod (the binary's default is loopback);
# JSON logs for collectors.
ENV OBSERVABILITY_HTTP_ADDR=0.0.0.0:8080 \
    OBSERVABILITY_LOG_FORMAT=json
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/swisper-ingest"]
CMD ["serve"]
