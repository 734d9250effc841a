"""This project's study: published claims checked at small scale.

  claims.py       the claims as data, their arms, run in one comparison and
                  judged (experiments/claims.py is the entry point)
  verdicts.py     the judges: paired seed differences and noise
  claims_page.py  docs/claims.md

It is built on the library's reusable pieces (`fedjax_lab.run`: running a
comparison, seed statistics, the report, the tuner that chooses on
validation); `fedjax_lab` imports nothing from here.
"""
