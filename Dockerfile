# Multi-stage build of every leadpipe binary; one image, the service chosen by its command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 leadpipe
WORKDIR /app
COPY --from=build /out/ /usr/local/bin/
COPY config/ /app/config/
COPY examples/ /app/examples/
USER leadpipe
ENV LOG_FORMAT=json
CMD ["ingest"]
