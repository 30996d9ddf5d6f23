"""dode in other libraries' shapes: ``dode.integrations.diffusers`` (schedulers, pipelines, exports).

May import: every room below ``dode.cli``.
"""
