from services.debugger.app import create_app
from services.debugger.settings import DebuggerSettings
from shared.logging import configure_logging
from shared.web import run_service


def main() -> None:
    settings = DebuggerSettings()
    configure_logging("debugger", settings.log_level)
    run_service(create_app(settings), settings, settings.debugger_port)


if __name__ == "__main__":
    main()
