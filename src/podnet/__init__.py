"""podnet: a Kubernetes node pod-networking stack (CNI runtime, plugins, node daemon, agent)."""

__version__ = "0.1.0"
