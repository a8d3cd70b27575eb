"""The real-kernel lab: pods and nodes as Linux network namespaces."""
