"""gunicorn's config for examples/gunicorn_app.py; gunicorn reads ./gunicorn.conf.py by default.

The hooks are imported from the app module, so the channel they set is the one the
app's requests use (gunicorn runs a config file in a namespace of its own).
"""

from gunicorn_app import post_fork, worker_exit

__all__ = ["post_fork", "worker_exit"]
