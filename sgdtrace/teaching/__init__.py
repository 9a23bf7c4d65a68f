"""What the teaching views show, computed: one batch explained, the graph beside torch's.

The modules here do the work (re-run a step by hand, build torch's graph); the views in
:mod:`sgdtrace.views` only render their results.
"""
