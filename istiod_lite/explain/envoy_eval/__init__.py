"""A small evaluator of Envoy's own configuration (listener matchers, routes, RBAC, jwt_authn,
faults) for one HTTP request: what ``explain request`` reports is computed from the very protobufs
the server sends, so it describes what Envoy will do, not what the translator meant."""
