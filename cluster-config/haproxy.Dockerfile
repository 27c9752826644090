# HAProxy for the docker-compose cluster, from Debian's package (haproxy 2.6 in bookworm).
#
#   docker build -t roomcast-haproxy:latest -f cluster-config/haproxy.Dockerfile cluster-config
#   (scripts/docker-build.sh does this)
#
# Built FROM debian:bookworm-slim rather than the haproxy image so that only one base image is
# needed (scripts/docker-base.sh makes it where no registry is reachable). apt-get runs inside
# the build: containers reach Debian's mirror over plain http (packages are verified by apt's
# signatures), on a normal machine and on the project's machines alike.
# Runs as Debian's `haproxy` system user; the config uses no chroot and binds ports > 1024.
# docker-compose.yml mounts cluster-config/haproxy.cfg over the copy baked in here.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /usr/local/etc/haproxy \
 && haproxy -v
COPY haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg
USER haproxy
EXPOSE 8080/tcp 8404/tcp
# -W: master-worker (reload with SIGUSR2), -db: stay in the foreground.
ENTRYPOINT ["haproxy", "-W", "-db"]
CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
