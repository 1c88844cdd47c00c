"""Best-of-N inference on Ray Serve: ``api`` (pure request and response functions), ``deployments`` (the
Generator and Scorer replicas), ``ingress`` (the FastAPI front: auth, bounded reads, admission, metrics) and
``app`` (``build(cfg)`` and the ``serve run`` target)."""
