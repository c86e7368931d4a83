"""The narration core: one job's text to stored chunks, a stitched narration, captions and a manifest.

Queue-free: it never imports Celery or the worker runtime (tests/unit/test_layers.py holds it to that); it uses the
model layer (worker.models) and the contract (producer). The Celery runtime in worker/ runs it under a job's lock.
"""
