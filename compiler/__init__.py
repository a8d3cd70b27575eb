"""npemu compiler: Kubernetes manifests to iptables-style match tables (pure, no I/O)."""
