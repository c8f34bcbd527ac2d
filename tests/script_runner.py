"""Run a script of scripts/ in-process, as the tests do: ``run_main("train_cifar.py", "--data", ...)``.

The scripts import ``preamble`` (the BLAS environment) from their own folder, so that folder is put
on ``sys.path`` once here.
"""
import os
import runpy
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)  # for the scripts' `import preamble`


def run_main(script, *argv):
    """scripts/<script>'s ``main(argv)``, loaded without running it as __main__; returns its exit status
    (argparse's and the script's own ``SystemExit`` become their status)."""
    namespace = runpy.run_path(os.path.join(SCRIPTS, script), run_name="npsn_script_under_test")
    try:
        return namespace["main"](list(argv))
    except SystemExit as exc:
        return exc.code
