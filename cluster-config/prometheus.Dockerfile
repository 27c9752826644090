# Prometheus for the docker-compose cluster, from Debian's package (prometheus 2.42 in bookworm).
#
#   docker build -t roomcast-prometheus:latest -f cluster-config/prometheus.Dockerfile cluster-config
#   (scripts/docker-build.sh does this)
#
# Built FROM debian:bookworm-slim rather than prom/prometheus so that only one base image is
# needed (scripts/docker-base.sh makes it where no registry is reachable). apt-get runs inside
# the build: containers reach Debian's mirror over plain http (packages are verified by apt's
# signatures), on a normal machine and on the project's machines alike.
# Runs as Debian's `prometheus` system user; data in the volume /prometheus.
# docker-compose.yml mounts prometheus.yml and alerts.yml over the copies baked in here.
FROM debian:bookworm-slim
# moment-timezone (a dependency of the web UI) ships ~200 MB of historic time zone tables the
# UI does not load; dpkg skips them.
RUN echo 'path-exclude /usr/share/javascript/moment-timezone/data/*' \
      > /etc/dpkg/dpkg.cfg.d/roomcast-slim \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus \
 && chown prometheus:prometheus /prometheus \
 && prometheus --version
COPY prometheus.yml alerts.yml /etc/prometheus/
USER prometheus
VOLUME ["/prometheus"]
EXPOSE 9090/tcp
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus", \
     "--storage.tsdb.retention.time=2d", \
     "--web.listen-address=:9090", \
     "--web.enable-lifecycle"]
