"""Explanations of what the mesh does with a service or a request (``istiod-lite explain``)."""
