"""The `flowhooks` command (`cli.main`) and what only it uses: the HTTP API client, the
development supervisor and the administrators' commands. Not a service: it runs beside
them, reaching them over HTTP, or a service's own module for that service's tables."""
