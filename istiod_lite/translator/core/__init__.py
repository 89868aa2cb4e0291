"""Shared by every translator stage: Istio's names, protobuf helpers, the output container and
the per-snapshot index.  Imports nothing else of the translator."""
