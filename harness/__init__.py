"""What the tests and the benchmarks share to run flowhooks for real: a whole system of
service processes on a fresh vhost and database, RabbitMQ clusters and PostgreSQL
replica pairs of their own, and HTTP clients and receivers. Not shipped in the image."""
