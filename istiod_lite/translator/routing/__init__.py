"""Routes: VirtualService and Gateway API HTTPRoute rules as Envoy routes, and TCP routing."""
