"""Kubernetes test-bed fixtures."""
