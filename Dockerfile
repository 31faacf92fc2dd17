# syntax=docker/dockerfile:1
# One image for every service: `erp serve <service>`, `erp migrate`, `erp up`.
# Built elsewhere (no Docker engine here); the chart runs it as a non-root user with a
# read-only root filesystem.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proto proto
COPY services services
COPY integration-tests integration-tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p erp \
 && install -D -m 0755 target/release/erp /out/erp

# `erp backup` for the chart's CronJob: the same binary beside pg_dump and pg_restore
# (docker build --target backup -t <repository>-backup:<tag> .).
FROM debian:bookworm-slim AS backup
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/erp /usr/local/bin/erp
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/erp"]
CMD ["backup", "--into", "/backups"]

# The services (the default target, built last).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/erp /usr/local/bin/erp
USER 65532:65532
EXPOSE 50051
ENV ERP__SERVER__HOST=0.0.0.0 \
    ERP__TELEMETRY__LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/erp"]
CMD ["up"]
