# refreshd as a container (e.g. a sidecar next to a VICIdial stack). With compose, use
# deploy/docker/compose.yml (README, "As a Docker sidecar"); with plain docker:
#
# Build:  docker build -t refreshd .        (BuildKit, the default since Docker 23)
# Check:  docker run --rm -v /srv/refreshd/refreshd.toml:/etc/refreshd/refreshd.toml:ro \
#           -v /srv/refreshd/secrets:/run/secrets:ro -e CREDENTIALS_DIRECTORY=/run/secrets \
#           refreshd check -c /etc/refreshd/refreshd.toml
#         (the same environment and mounts as the daemon below: check reads the passwords)
# Run:    docker run -d --name refreshd --restart always --stop-timeout 30 \
#           -v /srv/refreshd/refreshd.toml:/etc/refreshd/refreshd.toml:ro \
#           -v /srv/refreshd/secrets:/run/secrets:ro -e CREDENTIALS_DIRECTORY=/run/secrets \
#           -v refreshd-state:/var/lib/refreshd refreshd
# Reload: docker kill -s HUP refreshd     (refreshd is PID 1 and handles SIGHUP itself)
#
# Passwords: files read as uid 10001 (below). A bind mount keeps the host's owners and
# modes, so on the host: chown -R 10001:10001 /srv/refreshd/secrets; chmod -R go= it. Or
# password_env with -e NAME / --env-file FILE. Never bake them into the image.
# Restart: `always`, not `unless-stopped`: `docker kill -s HUP` marks a container as
# manually stopped (moby#41302), and unless-stopped would then not bring it back after a
# crash or a reboot. Exit 78 never loops: see --wait-for-config below.
# Stopping: on SIGTERM calls in flight get shutdown_grace (20 s by default) to finish, but
# `docker stop` waits only 10 s before SIGKILL; give it more (--stop-timeout 30, or
# `stop_grace_period: 30s` in compose).
# Logs: JSON lines on stdout, so `docker logs` and any log driver get them as they happen.

# --- Build: the project and every dependency as wheels -------------------------------
# The runtime stage then installs offline, from exactly these files, with no build tools.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY refreshd ./refreshd
# tzdata (the IANA database as a Python package) backs zoneinfo where the base image's
# /usr/share/zoneinfo lacks a name: Debian 13 moved the old aliases operators still use
# (US/Eastern, US/Central, ...) to tzdata-legacy, which slim images do not install.
RUN pip wheel --wheel-dir /wheels . tzdata

# --- Runtime ----------------------------------------------------------------------------
FROM python:3.11-slim
# Keep in step with refreshd.__version__ (tests/process/test_deployment.py checks it).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="refreshd" \
      org.opencontainers.image.description="Schedules VICIdial server_refresh calls inside refresh windows, safely." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"

# Each JSON log line leaves at once, not when a buffer fills.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed uid/gid, so a bind-mounted state directory can be chowned on the host
# (chown 10001:10001) and Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 refreshd \
 && useradd --system --uid 10001 --gid refreshd --no-create-home \
        --home-dir /var/lib/refreshd --shell /usr/sbin/nologin refreshd \
 && install -d -o root -g root -m 0755 /etc/refreshd \
 && install -d -o refreshd -g refreshd -m 0700 /var/lib/refreshd

# The wheels are bind-mounted for this one step, so they never become a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels refreshd tzdata

# Config: mount refreshd.toml read-only at /etc/refreshd (none ships in the image).
# State: state_path defaults to /var/lib/refreshd/state.db, in this volume; declared after
# the chown above so a new volume starts owned by refreshd.
VOLUME ["/var/lib/refreshd"]
WORKDIR /var/lib/refreshd
USER 10001:10001

# /metrics and /healthz. metrics_listen defaults to 127.0.0.1:9464: enough for the
# HEALTHCHECK below, which runs inside the container; for Prometheus to scrape through a
# published port set metrics_listen = "0.0.0.0:9464" in the config.
EXPOSE 9464

# 200 while the scheduling loop is alive, else unhealthy. Plain Python: the slim image has
# no curl. With metrics_listen on another port, or "" (off), override it (--health-cmd, or
# `healthcheck:` in compose) or disable it (--no-healthcheck).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=3).status == 200 else 1)"]

# SIGTERM is the clean stop: no new calls, calls in flight finish, state is flushed, exit 0.
STOPSIGNAL SIGTERM
# Exec form, no shell and no init: refreshd is PID 1, so `docker stop` and `docker kill -s
# HUP` reach it. The kernel drops a signal to PID 1 that has no handler; refreshd installs
# its handlers for TERM, INT and HUP first thing (tests/process/test_deployment.py runs it
# as PID 1 of its own PID namespace). It starts no child processes, so none to reap.
ENTRYPOINT ["refreshd"]
# --wait-for-config: an invalid config at start is logged (config.rejected) and then the
# daemon waits for SIGHUP instead of exiting 78. Docker's restart policies cannot exempt an
# exit code, so exiting would restart it forever on a file no restart can fix; waiting, the
# container stays up and unhealthy until the file is fixed and `docker kill -s HUP` is sent.
CMD ["run", "-c", "/etc/refreshd/refreshd.toml", "--wait-for-config"]
