# hushgate: one image for the proxy, the control plane and the CLI.
#
#   podman build -t hushgate .            (or docker build; BASE below picks the base image)
#   podman run --rm -v hushgate-data:/var/lib/hushgate hushgate init
#   podman run -d -p 127.0.0.1:8080:8080 -v hushgate-data:/var/lib/hushgate hushgate proxy
#
# Runs as an unprivileged user (uid 10001), with a read-only root filesystem (`--read-only`,
# compose's read_only): everything it writes is in /var/lib/hushgate (the data volume:
# database, keys, audit head) and /tmp (a tmpfs). The base must be Debian trixie (Python
# 3.13); without a registry, deploy/container/build-image.sh makes one with mmdebstrap.
ARG BASE=docker.io/library/debian:trixie-slim
FROM ${BASE}

# Python, the CA bundle and tini (reaps children, forwards SIGTERM). An imported base made by
# build-image.sh has them already and needs no network here. Not pinned: the suite's
# current packages, security updates included.
# hadolint ignore=DL3008
RUN set -eu; \
    if ! command -v python3 >/dev/null || ! command -v tini >/dev/null \
       || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates tini; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 hushgate; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hushgate --no-create-home \
      --shell /usr/sbin/nologin hushgate; \
    install -d -o hushgate -g hushgate -m 0700 /var/lib/hushgate

# hushgate and its dependencies into a virtualenv: from PyPI, or, when the build context's
# deploy/container/wheels/ holds wheels (deploy/container/build-image.sh puts them there),
# from those alone, with no network.
COPY setup.cfg pyproject.toml README.md /src/
COPY control /src/control
COPY proxy_addons /src/proxy_addons
COPY schemas /src/schemas
COPY deploy/container/wheels/ /wheels/
COPY deploy/container/entrypoint.sh /usr/local/bin/hushgate-entrypoint
RUN set -eu; \
    python3 -m venv /opt/hushgate; \
    pip="/opt/hushgate/bin/pip install --no-cache-dir --disable-pip-version-check -q"; \
    if ls /wheels/hushgate-*.whl >/dev/null 2>&1; then \
      $pip --no-index --find-links /wheels hushgate; \
    else \
      $pip /src; \
    fi; \
    rm -rf /src /wheels; \
    chmod 0755 /usr/local/bin/hushgate-entrypoint

ENV PATH=/opt/hushgate/bin:$PATH \
    HUSHGATE_CONFIG=/etc/hushgate/hushgate.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY deploy/container/hushgate.yaml /etc/hushgate/hushgate.yaml

USER 10001:10001
WORKDIR /var/lib/hushgate
VOLUME ["/var/lib/hushgate"]
EXPOSE 8080 8090

# The proxy's and the control plane's /healthz; the entrypoint knows which one this
# container runs (HUSHGATE_HEALTH_URL, set by the command).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["hushgate-entrypoint", "healthcheck"]

ENTRYPOINT ["tini", "--", "hushgate-entrypoint"]
CMD ["up"]
