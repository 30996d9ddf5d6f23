"""The ground floor: what every room may use and that uses no other room of dode -- where shipped files are
(``packaged``), progress bars (``progress``), device choice (``devices``), image representations
(``images``), the frozen-configuration base (``config``) and lazy package faces (``lazy``).

May import: the standard library and third-party packages only.
"""
