"""The paper's experiments as data: each ``experiments/*.py`` script is a list of settings that one
runner trains, predicts and evaluates (``runner``), on the cases of a cohort (``cohorts``), and
reports as tables (``report``), behind one command line (``command``)."""
from .cohorts import Cohort, acdc_cohort, kfold_splits, mmwhs_cohort, mscmrseg_cohort
from .command import main
from .report import PUBLISHED, STRUCTURES, markdown_table, summarize_experiment
from .runner import Setting, run_experiment

__all__ = ["Setting", "Cohort", "kfold_splits", "mmwhs_cohort", "mscmrseg_cohort", "acdc_cohort",
           "run_experiment", "summarize_experiment", "markdown_table", "main", "PUBLISHED",
           "STRUCTURES"]
