"""istiod-lite: Istio's control plane for ambient waypoint proxies, in Python."""

import os

# The agent and the HBONE tools start Envoy from a process that also runs gRPC, with a
# ``preexec_fn`` (so Envoy dies with its parent): that makes Python fork, and gRPC's fork
# handlers then occasionally abort the child ("epoll_wait error: Bad file descriptor").  No child
# of ours uses gRPC, so the handlers are turned off before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
