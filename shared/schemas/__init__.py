"""Message schemas (pydantic), defined once and imported by producer and consumer."""
