"""The lab's traffic modes (``python -m lab.client <mode>``), one module per kind of traffic."""
