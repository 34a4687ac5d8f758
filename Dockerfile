# One image for all four services: `docker run IMAGE ingress|runner|auth|debugger|migrate`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app flowhooks
COPY --from=build /install /usr/local
WORKDIR /app
USER flowhooks
ENV FLOWHOOKS_HOST=0.0.0.0 PYTHONUNBUFFERED=1
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["flowhooks"]
CMD ["ingress"]
