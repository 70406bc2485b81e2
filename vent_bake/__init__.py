"""vent-bake: one cluster file in, a complete Kubernetes-the-Hard-Way bootstrap out."""

__version__ = "0.1.0"
