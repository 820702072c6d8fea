"""Checks of the deployment files: images, manifests/, the Helm chart, cluster tests."""
