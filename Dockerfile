# One image for all four services: `docker run IMAGE ingress|runner|auth|debugger|migrate`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY cli ./cli
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 flowhooks \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app flowhooks
COPY --from=build /install /usr/local
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The root filesystem is read-only in the deployments: no .pyc files written at run time.
ENV FLOWHOOKS_HOST=0.0.0.0 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The services' ports, then their ops ports (/metrics; not for the public network).
EXPOSE 8080 8081 8082 8083 9080 9081 9082 9083
ENTRYPOINT ["flowhooks"]
CMD ["ingress"]
