from services.ingress.app import create_app
from services.ingress.settings import IngressSettings
from shared.logging import configure_logging
from shared.web import run_service


def main() -> None:
    settings = IngressSettings()
    configure_logging("ingress", settings.log_level)
    run_service(create_app(settings), settings, settings.ingress_port)


if __name__ == "__main__":
    main()
