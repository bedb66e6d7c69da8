"""Compatibility package: its modules moved (see `streammind/__init__.py`).

`python -m streammind.datasets.converters` still runs `streammind convert-annotations`;
`streammind.datasets.video` says where it went.
"""
