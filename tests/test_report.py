"""`lsearch report`: a self-contained HTML file drawn in a real headless Chromium (Debian's
`chromium` and `chromium-driver`, installed by .ci/run) with every other host blocked, and the
same figures and verdicts stored in the studies for optuna-dashboard."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from optuna_dashboard._note import get_note_from_system_attrs

from tests.conftest import TINY, run_lsearch

SMALL = [*TINY, "--set", "data.test_per_class=20"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A search of 4 trials, a 2 × 2 comparison from its best trial on 3 seeds, an
    evaluation, and the report of it all."""
    folder = tmp_path_factory.mktemp("report")
    assert run_lsearch("run", "--trials", "4", *SMALL, cwd=folder).returncode == 0
    compared = run_lsearch(
        "compare", "--grid", "label_smoothing=0,0.2", "--grid", "trainable_layers=3,4",
        "--from-best", "--seeds", "0-2", *SMALL, cwd=folder,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    evaluated = run_lsearch("evaluate", "--seeds", "0-1", cwd=folder)
    assert evaluated.returncode == 0, evaluated.stderr
    result = run_lsearch("report", "-o", "report.html", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "wrote report.html" in result.stderr
    yield folder


def chrome() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert binary and driver_path, "Debian's chromium and chromium-driver are needed (.ci/run)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
        # Every host name resolves to nothing: a page that fetched anything would break.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_report_draws_every_figure_offline_in_chromium(reported: Path) -> None:
    page = reported / "report.html"
    text = page.read_text()
    expected = text.count('class="plotly-graph-div"')
    assert expected >= 10
    assert "<script src=" not in text, "plotly.js is embedded, nothing is loaded from elsewhere"
    driver = chrome()
    try:
        driver.get(page.as_uri())
        deadline = time.monotonic() + 60
        drawn = 0
        while time.monotonic() < deadline:
            drawn = driver.execute_script(
                "return [...document.querySelectorAll('.plotly-graph-div')]"
                ".filter(d => d.querySelector('.main-svg')).length"
            )
            if drawn == expected:
                break
            time.sleep(0.25)
        assert drawn == expected, f"{drawn} of {expected} figures drawn"
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert not [url for url in fetched if not url.startswith(("file:", "data:", "blob:"))]
        headings = driver.execute_script(
            "return [...document.querySelectorAll('h2')].map(h => h.textContent)"
        )
        assert headings[0] == "The answer"
        assert "Reliability diagrams" in headings and "Learning curves" in headings
        # Every figure has a title and labelled axes (with units where a quantity has one).
        titles = driver.execute_script(
            "return [...document.querySelectorAll('.plotly-graph-div')]"
            ".map(d => (d.layout && d.layout.title && (d.layout.title.text || d.layout.title))"
            " || '')"
        )
        assert all(titles), titles
        assert driver.save_screenshot(str(reported / "report.png"))
    finally:
        driver.quit()
    assert (reported / "report.png").stat().st_size > 10_000


def system_attrs(storage: str, name: str) -> dict:
    backend = optuna.storages.RDBStorage(storage)
    return backend.get_study_system_attrs(backend.get_study_id_from_name(name))


def test_the_figures_and_verdicts_are_stored_in_the_studies(reported: Path) -> None:
    storage = f"sqlite:///{reported / 'lsearch.db'}"
    figures = get_plotly_graph_objects(system_attrs(storage, "digits"))
    assert {"lsearch-epsilon-val-acc", "lsearch-learning-curves", "lsearch-reliability"} <= set(
        figures
    )
    json.loads(figures["lsearch-reliability"])  # a whole plotly figure, not a fragment
    note = get_note_from_system_attrs(system_attrs(storage, "digits"), None)["body"]
    assert "test accuracy" in note and "over 3 seeds" in note
    comparison = system_attrs(
        storage, "digits compare label_smoothing=0,0.2 trainable_layers=3,4 from-best"
    )
    stored = get_plotly_graph_objects(comparison)
    assert any(key.startswith("lsearch-forest-") for key in stored)
    assert any(key.startswith("lsearch-answer-") for key in stored)  # the answer's figure too
    assert "Paired differences" in get_note_from_system_attrs(comparison, None)["body"]
    # Reporting again replaces the figures (same ids), it does not add new ones.
    before = set(figures)
    again = run_lsearch("report", "-o", "again.html", cwd=reported)
    assert again.returncode == 0, again.stderr
    assert set(get_plotly_graph_objects(system_attrs(storage, "digits"))) == before


def test_a_report_of_nothing_is_a_user_error(tmp_path: Path) -> None:
    missing = run_lsearch("report", cwd=tmp_path)
    assert missing.returncode == 2 and "no study database" in missing.stderr
    assert not (tmp_path / "report.html").exists()


def test_static_images_say_how_to_enable_the_exporter(reported: Path) -> None:
    result = run_lsearch("report", "--format", "png", "-o", "figures", cwd=reported)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert result.returncode == 2
        assert "pip install kaleido" in result.stderr and "chromium" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    else:  # with kaleido and Debian's chromium, every figure becomes a PNG
        assert result.returncode == 0, result.stderr
        assert len(list((reported / "figures").glob("*.png"))) >= 10


def test_a_report_of_a_running_study_says_so(reported: Path, tmp_path: Path) -> None:
    shutil.copy(reported / "lsearch.db", tmp_path / "lsearch.db")
    optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'lsearch.db'}").ask()
    result = run_lsearch("report", "-o", "running.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "This study is still running (1 trials running" in (tmp_path / "running.html").read_text()
    )


def test_binned_means_leave_empty_cells_empty() -> None:
    from lsearch.outputs.figures import binned_means

    # Points at (0, 5) -> cell (row 0, col 0); two at (0.3, 20) -> the top right cell.
    x_edges, y_edges, z = binned_means([0, 0.3, 0.3], [5, 20, 20], [50, 90, 100], bins=2)
    assert x_edges == [0.0, 0.15, 0.3] and y_edges == [5.0, 12.5, 20.0]
    assert z == [[50.0, None], [None, 95.0]]


def test_a_multi_objective_study_gets_its_pareto_front(tmp_path: Path) -> None:
    run = run_lsearch(
        "run", "--trials", "3", *TINY, "--set", 'objective.metric="val_acc+val_ece"', cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    result = run_lsearch("report", "-o", "pareto.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "pareto.html").read_text()
    assert 'id="lsearch-pareto-front"' in text and "Pareto-optimal trial" in text


def test_publish_does_not_summarise_a_comparison_again(
    reported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comparison whose summary the caller passes (`lsearch compare` just computed it) is
    not summarised again: its stored note and the verdicts come from what was given; the
    search's other comparisons are still summarised from their trials."""
    from lsearch import comparison
    from lsearch.outputs import html_report

    shutil.copy(reported / "lsearch.db", tmp_path / "lsearch.db")
    url = f"sqlite:///{tmp_path / 'lsearch.db'}"
    storage = optuna.storages.RDBStorage(url)
    results = {s.study_name: r for s, r in html_report.comparison_results(storage, "digits")}
    name = "digits compare label_smoothing=0,0.2 trainable_layers=3,4 from-best"
    assert name in results and len(results) >= 2  # the comparison and the evaluation
    marker = "MARKER: the summary the caller gave"
    calls: list[str] = []
    real = comparison.summarise

    def counted(request: object, study: optuna.Study) -> dict:
        calls.append(study.study_name)
        return real(request, study)

    monkeypatch.setattr(comparison, "summarise", counted)
    _, verdicts = html_report.publish(
        storage, "digits", summaries={name: {**results[name], "verdicts": [marker]}}
    )
    assert name not in calls and sorted(calls) == sorted(set(results) - {name})
    assert marker in verdicts
    assert marker in get_note_from_system_attrs(system_attrs(url, name), None)["body"]
    assert marker in get_note_from_system_attrs(system_attrs(url, "digits"), None)["body"]


# ----------------------------------------------------------------------------- the answer first


def figure_ids(page: str) -> list[str]:
    """The plotly figures' div ids, in page order."""
    import re

    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page)


def test_the_answer_figure_comes_before_every_other_figure(reported: Path) -> None:
    page = (reported / "report.html").read_text()
    ids = figure_ids(page)
    assert len(ids) >= 10
    assert ids[0].startswith("lsearch-answer-"), ids[:3]
    assert not any(i.startswith("lsearch-answer-") for i in ids[2:])
    # The text answer follows the figure, before the next section.
    answer = page[page.index(f'id="{ids[0]}"') : page.index("The study at a glance")]
    assert "<li>test accuracy" in answer
    # The same figure is stored in the search study for optuna-dashboard.
    storage = f"sqlite:///{reported / 'lsearch.db'}"
    assert ids[0] in get_plotly_graph_objects(system_attrs(storage, "digits"))


def trial(state: str, eps: float, acc: list[float], ece: list[float]) -> object:
    from optuna.trial import TrialState, create_trial

    attrs = {
        "config": {"label_smoothing": eps, "epochs": 5, "lr": 1e-3, "trainable_layers": 2},
        "val_acc_per_seed": acc, "val_ece_per_seed": ece, "val_acc": sum(acc) / len(acc),
    }  # fmt: skip
    complete = state == "complete"
    return create_trial(
        state=TrialState.COMPLETE if complete else TrialState.PRUNED,
        value=attrs["val_acc"] if complete else None, user_attrs=attrs,
    )  # fmt: skip


def drawn_intervals(figure: object) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn in a figure, in its display units."""
    found = []
    for trace in figure.data:  # type: ignore[attr-defined]
        for axis in ("x", "y"):
            bars = getattr(trace, f"error_{axis}", None)
            values = getattr(trace, axis, None)
            if bars is None or bars.array is None or values is None:
                continue
            minus = bars.arrayminus if bars.arrayminus is not None else bars.array
            for value, up, down in zip(values, bars.array, minus, strict=True):
                found.append((value - down, value + up))
    return found


SEARCH = [
    trial("complete", 0.05, [0.93, 0.95, 0.94], [0.10, 0.12, 0.11]),
    trial("complete", 0.10, [0.95, 0.96, 0.955], [0.08, 0.09, 0.085]),
    trial("complete", 0.20, [1.0, 0.96, 1.0], [0.002, 0.04, 0.001]),  # t crosses 100 % and 0
    *(trial("pruned", 0.02 * i, [0.1, 0.2, 0.3], [0.3, 0.5, 0.7]) for i in range(1, 6)),
]


def test_the_accuracy_panel_fits_the_complete_trials() -> None:
    from lsearch.outputs.figures import epsilon_scatter

    figure = epsilon_scatter(SEARCH, "val_acc")
    low, high = figure.layout.yaxis.range
    assert low <= 93.0 and high >= 99.9  # every complete seed inside
    assert low > 30.0 and high - low < 15.0  # pruned trials (10-30 %) do not stretch it
    assert "5 pruned trials lie outside it" in figure.layout.title.text
    pruned = [t for t in figure.data if t.name.startswith("pruned")]
    assert len(pruned) == 1 and pruned[0].error_y.array is None  # light marks, no interval
    assert len(pruned[0].y) == 5


def test_no_drawn_interval_leaves_its_metric_range() -> None:
    from lsearch.outputs.figures import cell_means, epsilon_scatter

    accuracy = drawn_intervals(epsilon_scatter(SEARCH, "val_acc"))
    ece = drawn_intervals(epsilon_scatter(SEARCH, "val_ece"))
    assert len(accuracy) == 3 and len(ece) == 3
    assert all(0 <= low <= high <= 100 for low, high in accuracy), accuracy
    assert all(low >= 0 for low, _ in ece), ece
    assert max(high for _, high in accuracy) == 100  # clipped there, not dropped
    marks = [t for t in epsilon_scatter(SEARCH, "val_acc").data if "clipped" in t.name]
    assert marks and "t interval [" in marks[0].hovertext[0]

    def cell(label: str, values: list[float], low: float, high: float) -> dict:
        summary = {"mean": sum(values) / 3, "ci": {"low": low, "high": high}, "per_seed": values}
        return {"label": label, "metrics": {"test_acc": summary, "test_ece": summary}}

    result = {"cells": [cell("a", [0.99, 1.0, 0.97], 0.94, 1.02),
                        cell("b", [0.01, 0.0, 0.04], -0.03, 0.06)]}  # fmt: skip
    for metric in ("test_acc", "test_ece"):
        drawn = drawn_intervals(cell_means(result, metric))
        assert len(drawn) == 2 and all(0 <= lo <= hi <= 100 for lo, hi in drawn), drawn


def summary(*, two_by_two: bool, race: bool) -> dict:
    """A comparison summary built by hand in `summarise`'s shape, with the sequential part
    and, for a race, the race part (fractions; the figures draw pp)."""
    grid = {"label_smoothing": [0.1, 0.15], "epochs": [10, 20]} if two_by_two else {
        "label_smoothing": [0.0, 0.1, 0.2]}  # fmt: skip
    labels = ["ε 0.1, 10 epochs", "ε 0.15, 10 epochs", "ε 0.1, 20 epochs", "ε 0.15, 20 epochs"]
    labels = labels if two_by_two else ["ε 0", "ε 0.1", "ε 0.2"]
    cell_summary = {"mean": 0.9, "ci": {"low": 0.88, "high": 0.92}, "per_seed": [0.9] * 6}
    cells = [{"label": label, "metrics": {"test_acc": cell_summary}} for label in labels]
    pair = {
        "metric": "test_acc",
        "first": 1,
        "second": 0,
        "n": 6,
        "mean": 0.002,
        "ci": {"low": -0.001, "high": 0.005},
        "verdict": "test accuracy: t verdict",
    }
    path = [
        {"n": 4, "mean": 0.003, "low": None, "high": None},
        {"n": 6, "mean": 0.002, "low": -0.02, "high": 0.024},
    ]
    comparison = {
        **pair,
        "label": "ε 0.15 vs ε 0.1 at 10 epochs",
        "seeds": list(range(6)),
        "t_ci": {"low": -0.001, "high": 0.005},
        "ci": {"low": -0.02, "high": 0.024},
        "decision": "undecided",
        "decided_at": None,
        "path": path,
        "far_seeds": [],
        "seeds_to_decide": 85,
        "margin_out_of_reach": False,
        "line": "test accuracy: ε 0.15 vs ε 0.1 at 10 epochs: undecided at 6 seeds",
    }
    effect = {"mean": 0.01, "t_ci": {"low": 0.004, "high": 0.016}, "ci": None}
    effects = {
        "test_acc": {
            "factors": ["label_smoothing", "epochs"],
            "n": 6,
            "seeds": list(range(6)),
            "first_main": effect,
            "second_main": {**effect, "ci": {"low": -0.03, "high": 0.05}},
            "interaction": effect,
            "line": "test accuracy: effects line",
        }
    }
    return {
        "study": "digits compare by hand", "seeds": list(range(6)), "grid": grid,
        "metrics": ["test_acc"], "cells": cells, "comparisons": {"test_acc": [pair]},
        "factorial": None, "verdicts": ["test accuracy: t verdict", "another verdict"],
        "sequential": {"alpha": 0.05, "family": 8, "alpha_split": 0.00625, "prior_scale": 2.0,
                       "decide_on": ["test_acc"], "margin": 0.5, "comparisons": [comparison],
                       "effects": effects if two_by_two else {}},
        "race": {"start_seeds": 4, "max_seeds": 30, "trained": 41, "fixed_design": 120,
                 "done": True} if race else None,
    }  # fmt: skip


def test_the_answer_draws_t_and_anytime_intervals_and_the_race() -> None:
    from lsearch.outputs.answer import ANYTIME_NAME, T_NAME
    from lsearch.outputs.sections import answer_section

    section = answer_section([summary(two_by_two=True, race=True)])
    ids = [graph_id for graph_id, _ in section.figures]
    assert ids[0].startswith("lsearch-answer-") and ids[1].startswith("lsearch-race-")
    forest = section.figures[0][1]
    t_trace = next(t for t in forest.data if t.name == T_NAME)
    anytime = next(t for t in forest.data if t.name == ANYTIME_NAME)
    assert len(t_trace.x) == 3  # both main effects and the interaction
    assert [round(v, 6) for v in t_trace.error_x.array] == [0.6, 0.6, 0.6]  # pp, not fractions
    assert [round(v, 6) for v in anytime.error_x.arrayminus] == [0.0, 4.0, 0.0]
    assert anytime.text[0] == "anytime-valid: unbounded"  # ci None: said, not drawn as zero
    assert "undecided" in section.figures[1][1].data[-1].name  # the race's legend
    below = section.below[0]
    shown, folded = below.split("<details>")
    assert shown.count("<li>") == 2  # one line per decision: the comparison and the effects
    assert "All other verdicts (2)" in folded  # the t verdicts, folded


def test_the_answer_of_a_comparison_that_is_not_two_by_two_shows_its_pairs() -> None:
    from lsearch.outputs.answer import answer_forest, race_paths

    result = summary(two_by_two=False, race=False)
    forest = answer_forest(result)
    assert forest is not None
    # Fixed seeds: nothing was raced, so the label carries no decision, and no race figure.
    assert list(forest.layout.yaxis.ticktext) == ["ε 0.15 vs ε 0.1 at 10 epochs"]
    assert race_paths(result) is None
    raced = answer_forest(summary(two_by_two=False, race=True))
    assert raced is not None
    assert list(raced.layout.yaxis.ticktext) == ["ε 0.15 vs ε 0.1 at 10 epochs <b>(undecided)</b>"]
    # Without the sequential part, the forest draws the ordinary intervals alone.
    plain = {**result, "sequential": None}
    plain.pop("race")
    forest = answer_forest(plain)
    assert forest is not None and len(forest.data) == 1


def test_a_fixed_seed_forest_label_does_not_contradict_its_verdict() -> None:
    """On seeds fixed in advance the answer is the t interval and Holm's p; the anytime-valid
    interval drawn beside it decides nothing. A difference the text calls beyond seed noise
    (t interval above zero) but whose anytime-valid interval still spans zero must not be
    labelled "(undecided)" in the forest: nothing was raced, so no decision is shown."""
    from optuna.trial import TrialState, create_trial

    from lsearch.comparison import Request, summarise
    from lsearch.outputs.answer import answer_forest, decision_lines
    from lsearch.search.objective import TrialConfig
    from lsearch.spec import load_spec

    grid, seeds = {"label_smoothing": [0.0, 0.1]}, [0, 1, 2, 3, 4]
    request = Request(
        spec=load_spec("digits", ['train.schedule="constant"']), grid=grid,
        base=TrialConfig(label_smoothing=0.0, epochs=20, lr=3e-4, trainable_layers=3),
        seeds=seeds, metrics=["test_acc", "test_ece"], search_study="digits",
        name="digits compare",
    )  # fmt: skip
    gain = [0.010, 0.020, 0.004, 0.015, 0.011]  # ε 0.1 better on every seed, by ~1.2 pp
    study = optuna.create_study()
    for epsilon, seed in [(e, s) for e in grid["label_smoothing"] for s in seeds]:
        results = {"test_acc": 0.9 + (gain[seed] if epsilon else 0.0), "test_ece": 0.05}
        config = {"label_smoothing": epsilon, "epochs": 20, "lr": 3e-4, "trainable_layers": 3}
        attrs = {"config": config, "seeds": [seed], "held_out": {"20": results}}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=attrs))
    result = summarise(request, study)
    assert result["race"] is None
    (line, _) = decision_lines(result)
    assert "better beyond seed noise" in line, line
    (comparison,) = [c for c in result["sequential"]["comparisons"] if c["metric"] == "test_acc"]
    assert comparison["t_ci"]["low"] > 0 and comparison["ci"]["low"] < 0  # the two disagree
    forest = answer_forest(result)
    assert forest is not None
    assert list(forest.layout.yaxis.ticktext) == ["ε 0.1 vs 0"]


# ----------------------------------------------------------------------------- any storage


@pytest.fixture()
def copied(reported: Path, tmp_path: Path) -> str:
    shutil.copy(reported / "lsearch.db", tmp_path / "lsearch.db")
    return f"sqlite:///{tmp_path / 'lsearch.db'}"


COMPARED = "digits compare label_smoothing=0,0.2 trainable_layers=3,4 from-best"


def test_a_storage_of_comparisons_alone_reports_them(copied: str, tmp_path: Path) -> None:
    import lsearch

    optuna.delete_study(study_name="digits", storage=copied)  # as after a lone compare
    written = lsearch.report(storage=copied, output=tmp_path / "alone.html")
    page = written.written[0].read_text()
    assert f"<h2>Comparison: {COMPARED}</h2>" in page
    assert figure_ids(page)[0].startswith("lsearch-answer-")
    assert "Learning curves" not in page and written.verdicts


def test_study_naming_a_comparison_reports_that_comparison(copied: str, tmp_path: Path) -> None:
    import lsearch

    written = lsearch.report(COMPARED, storage=copied, output=tmp_path / "one.html")
    page = written.written[0].read_text()
    assert f"lsearch report: {COMPARED}" in page
    assert page.count("<h2>Comparison: ") == 1  # not the evaluation beside it
    assert "Learning curves" not in page


def test_several_searches_or_none_at_all_stay_one_line_errors(tmp_path: Path) -> None:
    import lsearch
    from lsearch.errors import UserError

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(url)  # a storage with no study in it
    with pytest.raises(UserError, match="holds no study yet") as empty:
        lsearch.report(storage=url, output=tmp_path / "r.html")
    for name in ("one", "two"):
        optuna.create_study(study_name=name, storage=url)
    with pytest.raises(UserError, match="several search studies") as several:
        lsearch.report(storage=url, output=tmp_path / "r.html")
    assert "\n" not in str(empty.value) + str(several.value)
    assert not (tmp_path / "r.html").exists()
