"""The project's own experiments: thin entry points and the study (study/).

Nothing in `fedjax_lab` imports from here.
"""
