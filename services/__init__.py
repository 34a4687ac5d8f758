"""The four flowhooks services, one package each; `cli.main` is the `flowhooks` command."""
