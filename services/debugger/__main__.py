from services.debugger.app import SERVICE

if __name__ == "__main__":
    SERVICE.main()
