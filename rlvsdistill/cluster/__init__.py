"""Kubernetes: render job objects from configs (render.py), validate them (validate.py), submit them (submit.py)."""
