"""Entry points: the shell every job in jobs/ shares (``job``) and the ``rlhf-ray`` command (``main``)."""
