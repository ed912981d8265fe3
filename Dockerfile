# polytomic-gateway: an authenticating reverse proxy sidecar for the Polytomic API.
#
#   docker build -t polytomic-gateway .
#
# The image keeps the config's sidecar default, listening on 127.0.0.1:8080,
# which is reachable only from containers sharing the network namespace (a
# Kubernetes pod). To publish the port from a plain `docker run`, override it:
#
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -e GATEWAY__SERVER__LISTEN=0.0.0.0:8080 \
#     -e POLYTOMIC_PARTNER_KEY \
#     polytomic-gateway
#
# The demo also works in the image, from any directory: its config, keys and
# schemas are built into the binary, and it writes them to a private
# directory under /tmp at start (so with `--read-only`, add `--tmpfs /tmp`):
#
#   docker run --rm -p 127.0.0.1:8080:8080 polytomic-gateway demo --listen 0.0.0.0:8080

# ---- build -------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Only what the binary needs: Cargo.toml names src/lib.rs and src/main.rs and
# declares benches (which cargo requires to exist, so benches/ is copied) but
# builds only the binary; examples and tests are not copied.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
# The generated API catalog, embedded in the binary (src/catalog.rs).
COPY catalog/polytomic-*.json catalog/
# The demo's config, keys and schemas, embedded in the binary (src/demo.rs).
COPY config/demo.toml config/demo-partner-key config/demo-jwt-secret config/
COPY schemas/organization-create.json schemas/organization-update.json schemas/
COPY benches/ benches/
RUN cargo build --profile dist --locked --bin polytomic-gateway

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

# The gateway trusts its built-in webpki roots plus `upstream.ca_file`; the
# system bundle is here so `ca_file` can point at it or at a CA added to it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway

# Relative paths in the config (credential files, ca_file) resolve against
# the working directory.
WORKDIR /app
COPY config/ /app/config/
COPY schemas/ /app/schemas/
COPY --from=build /src/target/dist/polytomic-gateway /usr/local/bin/polytomic-gateway

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001
EXPOSE 8080

# No HEALTHCHECK: the image has no HTTP client. Probe /healthz and /readyz
# from the orchestrator (deploy/kubernetes/deployment.yaml does; README.md,
# "Deploying as a sidecar").
ENTRYPOINT ["/usr/local/bin/polytomic-gateway"]
CMD ["serve", "--config", "/app/config/gateway.toml"]
