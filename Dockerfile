# The updater image: a static binary on scratch, 23.6 MB (23,550,575 bytes
# by docker image inspect --format '{{.Size}}' after `make image` at
# ea3908e): a 23.3 MB binary and a 0.2 MB CA bundle. `make image-multiarch` builds the same image for
# linux/amd64, arm64 and arm/v7 (scripts/multiarch; its test keeps the two
# in step, so change both).
#
# GO_IMAGE is the builder. On a normal machine the public golang image is
# pulled; on a machine without Docker Hub, tag a local Go toolchain image
# under that name or pass --build-arg GO_IMAGE=… (see `make image`).
ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
# The build stage stays as the build cache (an untagged image labelled so):
# docker image prune --filter label=org.updater.stage=build removes it.
LABEL org.updater.stage=build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN ["go", "mod", "download"]
COPY cmd ./cmd
COPY internal ./internal
ARG VERSION=dev
RUN ["sh", "-c", "go build -ldflags \"-s -w -X main.version=${VERSION}\" -o /out/updater ./cmd/updater"]

FROM scratch
# REVISION is the commit built, CREATED its time in RFC 3339 (see make image).
ARG VERSION=dev
ARG REVISION=
ARG CREATED=
LABEL org.opencontainers.image.title="updater" \
      org.opencontainers.image.description="Continuous deployment for Docker Swarm stacks: digest watch, health-gated promotion, rollback" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/updater-dev/updater" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
# Registries are reached over HTTPS: the builder's CA bundle comes along.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/updater /updater
# Root by default: the Docker socket is root:docker 0660. To run as a
# non-root user, add `user: "65534:<gid of the docker group on the host>"`
# in the stack file.
# Registry credentials: mount a Docker config.json (or a secret) here.
ENV DOCKER_CONFIG=/config
# Alive means the HTTP server answers /healthz (UPDATER_LISTEN, :8080 by
# default); the image has no shell or curl, so the binary asks itself.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["/updater", "healthcheck"]
ENTRYPOINT ["/updater"]
CMD ["run"]
