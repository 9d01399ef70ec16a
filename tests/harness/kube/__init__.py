"""Real Kubernetes components for the tests, built from upstream source (see build.py and tests/README-kube.md)."""
