"""``make bench``: DreamSim end to end against the upstream package, in one run.

``python -m bench.run --help`` lists the knobs; ``bench/run.py`` says what is measured.
"""
