"""The commands of ``spnas`` (:mod:`nas.command`): one function per subcommand, importable from an installed wheel.

The top-level ``search.py``, ``train.py``, ``subnet_search.py``, ``hyperpower.py`` and the ``scripts/`` of the same
names are thin aliases of these functions.
"""
