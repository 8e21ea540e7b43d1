"""jdiff.generation: using a trained model. Restore a workdir (``restore``), resolve sampling settings
against it (``settings``), run the compiled sampling program (``program``) through the one front door
``generate``, and read editing inputs / write outputs (``files``). Used by ``sample.py``, ``eval.py`` and
the training loop's sample grids and evaluations; it never imports the training loop.
"""
from jdiff.generation import cascade
from jdiff.generation.files import texts_file
from jdiff.generation.generate import Plan, Result, generate, nonfinite_rows, plan, run
from jdiff.generation.restore import Restored
from jdiff.generation.settings import Settings, check_settings, config_hparams, resolve

__all__ = ["Plan", "Restored", "Result", "Settings", "cascade", "check_settings", "config_hparams",
           "generate", "nonfinite_rows", "plan", "resolve", "run", "texts_file"]
