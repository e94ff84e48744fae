# The routing proxy. Same install steps as the README: `pip install .` into a venv.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
RUN python -m venv /opt/router \
 && /opt/router/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/router/bin/pip install --no-cache-dir .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin router \
 && mkdir -p /etc/router
COPY --from=build /opt/router /opt/router
COPY router.yaml /etc/router/router.yaml
ENV PATH=/opt/router/bin:$PATH \
    ROUTER_CONFIG=/etc/router/router.yaml \
    PYTHONUNBUFFERED=1
USER router
EXPOSE 8080
# Mount your own config over /etc/router/router.yaml.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
CMD ["router", "serve", "--host", "0.0.0.0", "--port", "8080"]
