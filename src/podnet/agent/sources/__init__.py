"""The agent's sources: a manifest directory and the Kubernetes API, feeding one Store."""
