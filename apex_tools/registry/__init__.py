"""The registry side of push-registry: an API v2 client, the mirror, and the local registry."""
