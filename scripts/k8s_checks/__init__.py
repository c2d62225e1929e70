"""The offline Kubernetes checks run by scripts/k8s_invariants.py, one module a job."""
