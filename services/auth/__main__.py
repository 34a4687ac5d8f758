from services.auth.app import create_app
from services.auth.settings import AuthSettings
from shared.logging import configure_logging
from shared.web import run_service


def main() -> None:
    settings = AuthSettings()
    configure_logging("auth", settings.log_level)
    run_service(create_app(settings), settings, settings.auth_port)


if __name__ == "__main__":
    main()
