from services.runner.app import create_app
from services.runner.settings import RunnerSettings
from shared.logging import configure_logging
from shared.web import run_service


def main() -> None:
    # runner_token_key has no default: it must come from the environment.
    settings = RunnerSettings()
    configure_logging("runner", settings.log_level)
    run_service(create_app(settings), settings, settings.runner_port)


if __name__ == "__main__":
    main()
