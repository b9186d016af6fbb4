"""The composition root: the `lakehouse` command, the demo and the notebook runner.

The only package that knows every layer: it builds the settings once, starts the local services
when the profile asks for them, and hands the layers what must happen after their writes (the
serving refresh) as callbacks, so batch, speed and serving never import each other.
"""
