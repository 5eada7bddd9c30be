# fallacy as a container: a release build in a Rust image, then a slim runtime that runs as a
# non-root user.
#   docker build -t fallacy .
#   docker run --rm -p 127.0.0.1:8474:8474 -e FALLACY_ADMIN_TOKEN=change-me fallacy
# The admin API listens on 0.0.0.0:8474 in the container, so it wants either a token
# (FALLACY_ADMIN_TOKEN: every route but /healthz and /readyz then asks for
# "Authorization: Bearer <token>") or FALLACY_INSECURE_ADMIN=true for a private network that
# Toxiproxy clients (which send no token) must reach. With neither, it refuses to start and says
# so. Proxies come from a config file: mount one and pass --config, e.g.
#   docker run ... -v ./fallacy.toml:/etc/fallacy/fallacy.toml:ro fallacy --config /etc/fallacy/fallacy.toml

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the criterion bench; the manifest does not load without it.
COPY benches ./benches
RUN cargo build --release --locked --bin fallacy \
    && cp target/release/fallacy /fallacy

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fallacy
COPY --from=build /fallacy /usr/local/bin/fallacy
USER 10001
EXPOSE 8474
# `fallacy health` asks GET /healthz on the admin port (the image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["fallacy", "health", "--admin", "127.0.0.1:8474"]
ENTRYPOINT ["fallacy", "serve", "--admin", "0.0.0.0:8474"]
CMD []
