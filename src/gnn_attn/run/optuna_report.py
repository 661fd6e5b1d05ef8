"""The end of an Optuna search: the best trial as a command line, and Optuna's plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig
from optuna.importance import MeanDecreaseImpurityImportanceEvaluator

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class OptunaReport(Callback):
    """Hydra callback for ``hparams_search``: when the search ends, print the best trial
    and the command line that reruns it, and write ``optuna_history.png`` (objective per
    trial and best so far, Optuna's plot) and ``optuna_importance.png`` (parameter
    importances: mean decrease in impurity of a random forest fitted to the trials;
    Optuna 2's fANOVA evaluator and its importance plot fail with current NumPy and
    Matplotlib)
    into the sweep dir. The objective is ``optimized_metric`` (a validation metric)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if not sweeper.get("storage"):
            return
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            return
        best = study.best_trial
        base = [o for o in config.hydra.overrides.task if not o.startswith("hparams_search=")]
        if not any(o.startswith("model=") for o in base):  # the search file's choice
            base.insert(0, f"model={config.hydra.runtime.choices.model}")
        params = [f"{k}={v}" for k, v in best.params.items()]
        print(
            f"best trial #{best.number} of {len(done)}: {config.optimized_metric} "
            f"{best.value:.4f}\n  python train.py {' '.join([*base, *params])}"
        )
        out = Path(config.hydra.sweep.dir)
        for name, draw in (
            ("optuna_history.png", _history),
            ("optuna_importance.png", _importance),
        ):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's "experimental" notices
                    fig = draw(study)
                fig.tight_layout()
                fig.savefig(out / name, dpi=110)
                plt.close(fig)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. one trial
                print(f"{name} not drawn: {err}")
        print(f"study: {sweeper.storage} (continue it: hydra.sweeper.storage={sweeper.storage})")


def _history(study: optuna.Study) -> Figure:
    return optuna.visualization.matplotlib.plot_optimization_history(study).figure


def _importance(study: optuna.Study) -> Figure:
    evaluator = MeanDecreaseImpurityImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="#4C72B0")
    for y, n in enumerate(names):
        ax.annotate(f"{importances[n]:.2f}", (importances[n], y), va="center", fontsize=8)
    ax.set_xlabel("importance for the objective (mean decrease in impurity)")
    ax.set_title(f"Importances over {len(study.trials)} trials")
    return fig
