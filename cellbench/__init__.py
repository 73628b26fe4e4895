"""cellbench: colour normalization of blood-cell images between digital microscopes.

Data flows one way::

    images on disk / simulator -> datasets -> normalizers (fit, transform) -> evaluation
        -> results (JSON/CSV) -> report (HTML)
"""

__version__ = "0.1.0"
