"""``rlhf run MANIFEST``: an RLHFRun on this machine, with the stage entrypoint the cluster uses.

* :mod:`~rlhf.runner.manifest`: load and check the manifest as admission does; local storage.
* :mod:`~rlhf.runner.plan`: which stages run side by side, with how many processes and threads (pure).
* :mod:`~rlhf.runner.launch`: each stage's command line and environment.
* :mod:`~rlhf.runner.procs`: process groups, stopping them, exit reasons, log tails.
* :mod:`~rlhf.runner.progress`: live per-stage progress lines.
* :mod:`~rlhf.runner.report`: the final table, run_summary.json and status.yaml.
* :mod:`~rlhf.runner.runner`: the run itself.
* :mod:`~rlhf.runner.commands`: the ``rlhf prepare`` and ``rlhf run`` subcommands.
"""
