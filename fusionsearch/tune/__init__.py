"""fusionsearch on Ray Tune: everything that talks to Ray, in one package.

- :mod:`~fusionsearch.tune.driver`: connecting to Ray, ``run_search`` / ``resume_search``, clean
  interruption, the held-out evaluation tasks;
- :mod:`~fusionsearch.tune.callbacks`: Tune callbacks (the progress log, failed trials' errors,
  a failing storage); :mod:`~fusionsearch.tune.progress`: the per-fold progress lines;
- :mod:`~fusionsearch.tune.warm_actors`: trial actors kept warm between rounds;
  :mod:`~fusionsearch.tune.lost_checkpoints`: resuming past a checkpoint the storage lost;
- :mod:`~fusionsearch.tune.compat`: the only module that imports private or semi-internal Ray
  names; it checks the installed Ray's version at import.

The searchers and the trainables, which users pass to a plain ``tune.Tuner`` too, stay in the
top-level packages ``searchers`` and ``trainables``.
"""
