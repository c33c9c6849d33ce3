# Traverse in a container: a multi-stage build, then the binary (no debug information) on distroless's glibc base
# running as an unprivileged user. TURN relays need a port range reachable from outside: run with host networking
# (compose.yaml does), or publish 3478/udp, 3479/udp, 3478/tcp, 5349/tcp, 8080/tcp (or 443/tcp) and the relay range
# (relay.port_min/port_max, e.g. --relay-ports 49152-49999) and set --external-v4 to the host's public address.
#
#   docker build -t traverse .
#   docker run --network host traverse serve --http 8080 …
#   docker run --network host --user root --cap-drop ALL --cap-add NET_BIND_SERVICE traverse serve --single-port 443 …
#
# The second form binds 443: the image's user is unprivileged, and a port below 1024 needs root or the capability
# (root with every capability dropped but that one).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist -p traverse && cp target/dist/traverse /traverse
# The state directory, owned by the image's user: a volume mounted there starts with this owner, so ACME can keep
# its account and certificates and /check its reports (a root-owned one refuses them).
RUN mkdir -p /state

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /traverse /usr/bin/traverse
COPY packaging/deb/traverse.toml /etc/traverse/traverse.toml
# ACME's account and certificates, the /check reports; mount a volume to keep them.
COPY --from=build --chown=65532:65532 /state /var/lib/traverse
ENV STATE_DIRECTORY=/var/lib/traverse
VOLUME /var/lib/traverse
EXPOSE 3478/udp 3479/udp 3478/tcp 5349/tcp 8080/tcp 443/tcp
USER nonroot
ENTRYPOINT ["/usr/bin/traverse"]
CMD ["serve", "--config", "/etc/traverse/traverse.toml"]
