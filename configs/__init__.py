"""Run configs (`get_config()` files) and the sweeps beside them.

A package so variants can `from configs import default`; the entry points in
experiments/ put the repository root on sys.path.
"""
