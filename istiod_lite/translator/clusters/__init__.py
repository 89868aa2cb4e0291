"""Clusters and endpoints: a service's ``inbound-vip`` clusters, the ``outbound`` clusters of route
targets, clusters straight to a host, and how a DestinationRule's policy is chosen and applied."""
