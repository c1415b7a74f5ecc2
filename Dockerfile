# syntax=docker/dockerfile:1.7
# One image: natter-server (every service) and natter (the client).
# Build: docker build --build-arg NATTER_COMMIT=$(git rev-parse --short=12 HEAD) -t natter .
# Run:   docker run natter all

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# The commit `--version` and natter_build_info name: there is no .git in
# the build context (build.rs falls back to "unknown").
ARG NATTER_COMMIT=""
WORKDIR /src
# Dependencies and build artefacts live in cache mounts, so a change to
# natter's own code rebuilds only natter's crates.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY services ./services
COPY client ./client
COPY bench ./bench
COPY migrations ./migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p natter-server -p natter-client \
 && install -D -m 0755 target/release/natter-server /out/natter-server \
 && install -D -m 0755 target/release/natter /out/natter

# distroless: glibc and CA certificates, no shell, no package manager;
# runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/natter-server /out/natter /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8090 8091 8092
ENTRYPOINT ["/usr/local/bin/natter-server"]
CMD ["all"]
