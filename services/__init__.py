"""The four flowhooks services, one package each; `services.cli` is the `flowhooks` command."""
