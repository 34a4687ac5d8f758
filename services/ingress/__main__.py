from services.ingress.app import SERVICE

if __name__ == "__main__":
    SERVICE.main()
