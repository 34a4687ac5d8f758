"""Library code used by several flowhooks services: settings, logging, errors, messaging,
message schemas, database helpers and the common aiohttp pieces."""
