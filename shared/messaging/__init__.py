"""The messaging layer: one robust connection per process (`Broker`), JSON RPC over
reply queues (`RpcClient`, `RpcServer`), events on one topic exchange, and the
topology (exchanges, queues, arguments) declared in one place."""
