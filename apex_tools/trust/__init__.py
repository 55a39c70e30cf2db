"""Trust: the signing key, sigstore signatures, the containers policy, provenance and its report."""
