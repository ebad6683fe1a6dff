# syntax=docker/dockerfile:1.10
# swisper-ingest container image.
#
#   docker build \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse --short=12 HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     -t registry.example.com/swisper/swisper-ingest:0.1.0 .
#
# VERSION must be the version in Cargo.toml and REVISION the commit built
# (docs/release.md): the context has no .git, so REVISION is what the binary
# reports as its commit (--version, check, swisper_ingest_build_info). The
# build stops when the binary reports another version or commit, so the
# image's labels never lie about what runs.

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
ARG REVISION=unknown
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# .dockerignore keeps the context to the workspace: manifests, lock file,
# src/, migrations/ (embedded at compile time), loadtests/, benches/, tests/.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    SWISPER_INGEST_GIT_COMMIT="${REVISION}" cargo build --release --locked --bin swisper-ingest \
    && install -D -m 0755 target/release/swisper-ingest /out/swisper-ingest
RUN reported="$(/out/swisper-ingest --version)" \
    && if [[ "$reported" != "swisper-ingest ${VERSION} (commit ${REVISION})" ]]; then \
         echo "VERSION=${VERSION} REVISION=${REVISION} but the binary reports: ${reported}" >&2; exit 1; \
       fi

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
# RFC 3339 time of the build; a release passes it (empty otherwise).
ARG CREATED=""
ARG SOURCE=https://github.com/swisper/swisper-ingest
# Annotations of the OCI image spec: which release, which commit of which
# repository, under which licence, built when.
LABEL org.opencontainers.image.title="swisper-ingest" \
      org.opencontainers.image.description="SwisperStudio observability ingestion: Redis Streams consumer group to PostgreSQL" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /out/swisper-ingest /usr/local/bin/swisper-ingest
# Listen on every interface inside the pod (the binary's default is loopback);
# JSON logs for collectors.
ENV OBSERVABILITY_HTTP_ADDR=0.0.0.0:8080 \
    OBSERVABILITY_LOG_FORMAT=json
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/swisper-ingest"]
CMD ["serve"]
